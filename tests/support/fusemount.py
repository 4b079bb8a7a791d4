"""Run ``unionstore mount`` as a real process on a temporary mountpoint, for tests and bench.

    with FuseMount(endpoint, "bucket/prefix", access_key=..., secret_key=...) as m:
        data = (m.path / "some/file").read_bytes()
        m.stats()["cache"]["read_amplification.seq"]

``start()`` returns once the mountpoint shows in /proc/mounts (the daemon probes the bucket
before mounting, so a wrong endpoint fails here with the daemon's log). ``stop()`` always
unmounts (``fusermount3 -u``, then ``-u -z`` if the mount is busy or dead) and kills the
daemon's process group; it also runs at interpreter exit for mounts a test forgot.
``kill()`` simulates a crash (SIGKILL, mount left stale: ENOTCONN). A workdir the mount made
itself (mountpoint, cache, log) is removed at ``stop()``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.support.ports import log_tail, poll_until

_LIVE: set[FuseMount] = set()


def mount_ids(path: Path) -> set[str]:
    """IDs (from /proc/self/mountinfo) of the mounts stacked at ``path``."""
    target = str(path)
    with open("/proc/self/mountinfo") as f:
        return {
            fields[0]
            for fields in (line.split() for line in f)
            if fields[4].replace("\\040", " ") == target
        }


def is_mounted(path: Path) -> bool:
    return bool(mount_ids(path))


def unmount(path: Path) -> None:
    """Unmount ``path`` if mounted: a normal unmount first, a lazy one if that fails."""
    for args in (["fusermount3", "-u", str(path)], ["fusermount3", "-u", "-z", str(path)]):
        if not is_mounted(path):
            return
        subprocess.run(args, capture_output=True, timeout=30, check=False)
    if is_mounted(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30, check=False)


def mount_command() -> list[str]:
    """``unionstore mount``, as a user runs it."""
    return [sys.executable, "-m", "unionstore.cli", "mount"]


class FuseMount:
    def __init__(
        self,
        endpoint: str,
        bucket: str,
        *,
        access_key: str | None,
        secret_key: str | None,
        mountpoint: Path | None = None,
        cache_dir: Path | None = None,
        workdir: Path | None = None,
        **options: Any,
    ) -> None:
        self._owns_workdir = workdir is None  # removed at stop(), cache and all
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="unionstore-fuse-"))
        self.path = mountpoint or self.workdir / "mnt"
        self.cache_dir = cache_dir or self.workdir / "cache"
        self.endpoint, self.bucket = endpoint, bucket
        self.access_key, self.secret_key = access_key, secret_key
        self.options = options
        self.log_path = self.workdir / "mount.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        argv = [
            *mount_command(),
            self.endpoint,
            self.bucket,
            str(self.path),
            "--cache-dir",
            str(self.cache_dir),
        ]
        for name, value in self.options.items():
            flag = "--" + name.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif value not in (None, False):
                argv += [flag, str(value)]
        return argv

    def start(self, timeout: float = 30.0) -> FuseMount:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["PYTHONUNBUFFERED"] = "1"
        if self.access_key and self.secret_key:
            env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = (
                self.access_key,
                self.secret_key,
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
                cwd=self.workdir,
            )
        _LIVE.add(self)
        try:
            poll_until(
                self._answering,
                timeout,
                f"FUSE mount at {self.path}",
                proc=self.proc,
                log=self.log_path,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _answering(self) -> bool:
        """Mounted and served: a stale mount left by a crash fails statfs with ENOTCONN (it is
        not enough to see the path in /proc/mounts; a fresh mount may even reuse the ID)."""
        if not is_mounted(self.path):
            return False
        os.statvfs(self.path)
        return True

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.path / ".unionstore" / "stats").read_text())
        return data

    def invalidate(self, subtree: str = "") -> None:
        (self.path / ".unionstore" / "invalidate").write_text(subtree + "\n")

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """Crash the daemon (SIGKILL): the mount stays, answering ENOTCONN."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        try:
            unmount(self.path)
        finally:
            if self.proc is not None:
                if self.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.proc.pid, signal.SIGTERM)
                    try:
                        self.proc.wait(15)
                    except subprocess.TimeoutExpired:
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(self.proc.pid, signal.SIGKILL)
                        self.proc.wait(10)
                self.proc = None
            unmount(self.path)  # the daemon may have died with the mount still there
            _LIVE.discard(self)
            if self._owns_workdir and not is_mounted(self.path):  # never rm through a mount
                shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> FuseMount:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@atexit.register
def _stop_leftovers() -> None:
    for mount in list(_LIVE):
        with contextlib.suppress(Exception):
            mount.stop()


def hdfs_put_many(
    hdfs_url: str, files: dict[str, bytes], *, dirs: tuple[str, ...] = (), threads: int = 192
) -> None:
    """Write many files into HDFS at once (HDFS 2.7 closes a file in ~0.4 s, so one at a time
    10,000 files would take over an hour; 192 writers in parallel take ~30 s). Blocks are
    1 MiB: the DataNode reserves a whole block of disk per file being written."""
    from concurrent.futures import ThreadPoolExecutor

    import hdfs_native

    client = hdfs_native.Client(hdfs_url)
    options = hdfs_native.WriteOptions()
    options.block_size = 1 << 20
    parents = {p.rsplit("/", 1)[0] for p in files if "/" in p.strip("/")} | set(dirs)
    for parent in sorted(parents):
        client.mkdirs(parent, create_parent=True)

    def put(item: tuple[str, bytes]) -> None:
        path, data = item
        for attempt in range(5):
            try:
                with client.create(path, options) as f:
                    f.write(data)
                return
            except (OSError, RuntimeError):
                if attempt == 4:
                    raise
                with contextlib.suppress(Exception):  # a half-created file blocks the retry
                    client.delete(path)

    with ThreadPoolExecutor(max(1, min(threads, len(files)))) as pool:
        list(pool.map(put, files.items()))
