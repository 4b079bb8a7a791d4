"""Mounting: from options to a running pyfuse3 session on asyncio, and back.

Start-up, in order:

1. A mountpoint left behind by a crashed daemon answers every call with ENOTCONN; it is
   lazily unmounted (``fusermount3 -u -z``) so the same path can be mounted again. (A
   mountpoint still served by a live daemon is refused.)
2. The bucket is asked for one key, so a wrong endpoint, bucket or key fails here, with a
   message, before anything is mounted.
3. The block cache opens its folder: blocks fetched before a restart are served again
   without another GET.
4. ``pyfuse3.init`` mounts; the kernel's read-ahead for this mount is raised
   (``/sys/class/bdi/<major>:<minor>/read_ahead_kb``, unless ``read_ahead = "off"``) so
   sequential readers ask for 1 MiB chunks; SIGTERM/SIGINT/SIGHUP end the session
   cleanly: uploads nobody closed are aborted and the mountpoint is unmounted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pyfuse3
import pyfuse3.asyncio
import uvloop

from unionstore.fuse.blockcache import BlockCache
from unionstore.fuse.config import MountOptions
from unionstore.fuse.diskblocks import DiskBlocks
from unionstore.fuse.fs import FileSystem
from unionstore.fuse.ops import Operations
from unionstore.fuse.s3client import S3Client
from unionstore.fuse.s3errors import S3Error

log = logging.getLogger("unionstore.fuse.mount")
SWITCH_INTERVAL = 0.0005  # seconds a thread may hold the GIL while another waits


class MountError(RuntimeError):
    pass


def mounted_at(path: Path) -> str | None:
    """The file system type mounted exactly at ``path`` (from /proc/self/mounts), or None."""
    target = str(path)
    found = None
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and fields[1].replace("\\040", " ") == target:
                found = fields[2]
    return found


def _probe(path: Path, timeout: float = 10.0) -> OSError | None:
    """statfs() the mountpoint: unlike stat() it is never answered from the kernel's attribute
    cache, so a dead daemon shows as ENOTCONN. Runs in a thread: a hung daemon never answers."""
    result: list[OSError | None] = []

    def run() -> None:
        try:
            os.statvfs(path)
            result.append(None)
        except OSError as exc:
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True, name="probe-mountpoint")
    thread.start()
    thread.join(timeout)
    if not result:
        raise MountError(f"{path} is mounted but its daemon does not answer")
    return result[0]


def clean_stale_mount(path: Path) -> bool:
    """Lazily unmount a dead FUSE mount (ENOTCONN) at ``path``; True if one was cleaned."""
    error = _probe(path)
    if error is None or isinstance(error, FileNotFoundError):
        fstype = mounted_at(path)
        if error is None and fstype is not None and fstype.startswith("fuse"):
            raise MountError(f"{path} is already mounted ({fstype}) by a running daemon")
        return False
    if error.errno not in (errno.ENOTCONN, errno.ECONNABORTED):
        raise error
    log.warning("%s is a stale mount (its daemon is gone); unmounting it", path)
    for args in (["fusermount3", "-u", "-z", str(path)], ["umount", "-l", str(path)]):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            if subprocess.run(args, capture_output=True, timeout=30).returncode == 0:
                return True
    raise MountError(f"cannot unmount the stale mount at {path}")


def set_kernel_readahead(path: Path, kib: int) -> Path | None:
    """Raise the kernel's read-ahead for the FUSE mount at ``path`` to ``kib`` KiB (its
    backing device's ``read_ahead_kb``, found from the mount's st_dev, as JuiceFS does).

    The kernel's read-ahead for a new FUSE mount is 128 KiB, and it sends buffered reads as
    requests of at most its read-ahead window, so a sequential reader's 1 MiB ``read()``
    reached the daemon as 128 KiB requests; with 1024 KiB (and libfuse3's 256-page
    ``max_pages``) it arrives as one. Best effort: without the right to write sysfs (not
    root, read-only /sys in a container) the default stays and this is logged. Returns the
    file written, or None."""
    if kib <= 0:
        return None
    st = os.stat(path)
    bdi = Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb")
    try:
        bdi.write_text(str(kib))
    except OSError as exc:
        log.warning("cannot set %s to %d (%s); the kernel's default stays", bdi, kib, exc)
        return None
    log.info("kernel read-ahead of %s: %d KiB (%s)", path, kib, bdi)
    return bdi


def fuse_options(opts: MountOptions) -> set[str]:
    spec = f"{opts.bucket}/{opts.prefix}".rstrip("/")
    options = {"default_permissions", "fsname=unionstore:" + spec, "subtype=unionstore", "noatime"}
    if opts.allow_other:
        options.add("allow_other")
    if opts.read_only:
        options.add("ro")
    return options


def set_priority(nice: int) -> None:
    """Run the daemon at ``nice`` (before it starts threads: they inherit it), best effort.

    Every reader of the mount waits on this one process, and on a busy node it competes
    for the CPU with those readers: with 8 readers on 2 cores, cold 100 KB files went from
    552-619 to 696-709 files/s at nice -10 (less preemption of the event loop, less CPU per
    file). Raising the priority needs root (CAP_SYS_NICE); without it a warning is logged.
    """
    if nice == 0:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as exc:
        log.warning("cannot run at nice %d (%s); the scheduler's default stays", nice, exc)


def poll_first(
    wait: Callable[[int], Coroutine[Any, Any, None]],
) -> Callable[[int], Coroutine[Any, Any, None]]:
    """pyfuse3's wait for the FUSE device to be readable, asking the kernel first.

    pyfuse3 (asyncio mode) waits before every request: a future, an ``add_reader`` and a
    ``remove_reader`` (two ``epoll_ctl`` calls) and a turn of the loop, also when requests
    are already queued, which they are whenever several processes read. One ``poll`` with
    no timeout answers that case; the task still yields once, so handlers and fetches waiting
    on the loop take turns with the requests. pyfuse3 calls this under its read lock, one
    worker at a time, so a readable device stays readable until that worker reads it."""
    poller = select.poll()
    registered: set[int] = set()

    async def wait_readable(fd: int) -> None:
        if fd not in registered:
            poller.register(fd, select.POLLIN)
            registered.add(fd)
        ready = poller.poll(0)
        if ready and ready[0][1] & select.POLLIN:
            await asyncio.sleep(0)
            return
        await wait(fd)

    return wait_readable


async def check_bucket(client: S3Client, prefix: str) -> None:
    try:
        await client.list_page(prefix, delimiter="/", max_keys=1)
    except S3Error as exc:
        where = f"s3://{client.bucket}/{prefix} at {client.endpoint}"
        raise MountError(f"cannot list {where}: {exc}") from None


def run(opts: MountOptions) -> int:
    """Mount, serve until unmounted or signalled, clean up. Returns an exit code."""
    # The event loop answers the kernel while the disk-cache threads run Python code; with
    # the default 5 ms switch interval a reply waited for the GIL for up to 5 ms after each
    # syscall (measured: 4 cold readers got fewer files/s than one).
    sys.setswitchinterval(SWITCH_INTERVAL)
    set_priority(opts.nice)
    mountpoint = opts.mountpoint
    clean_stale_mount(mountpoint)
    mountpoint.mkdir(parents=True, exist_ok=True)
    pyfuse3.asyncio.enable()
    # measured: ~8% less daemon CPU per cold 100 KB file with 4 readers
    pyfuse3.asyncio.wait_readable = poll_first(pyfuse3.asyncio.wait_readable)  # type: ignore[assignment]
    # uvloop: its loop, sockets and fd watches are C, and each cold file costs the loop a
    # few wakeups (four kernel requests, one GET, one disk write)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_serve(opts))


async def _serve(opts: MountOptions) -> int:
    client = S3Client(
        opts.endpoint,
        opts.bucket,
        region=opts.region,
        credentials=opts.credentials,
        max_connections=4 * opts.fetch_concurrency,
    )
    disk: DiskBlocks | None = None
    try:
        await check_bucket(client, opts.prefix)
        disk = await asyncio.to_thread(DiskBlocks, opts.cache_dir, opts.cache_size)
        blocks = BlockCache(
            disk,
            block_size=opts.block_size,
            small_block_size=opts.small_block_size,
            readahead_blocks=opts.readahead_blocks if opts.read_ahead == "auto" else 0,
            fetch_concurrency=opts.fetch_concurrency,
            memory_bytes=opts.memory_cache_size,
        )
        fs = FileSystem(opts, client, blocks)
        ops = Operations(fs)
        pyfuse3.init(ops, str(opts.mountpoint), fuse_options(opts))
        log.info(
            "mounted s3://%s/%s from %s at %s",
            opts.bucket,
            opts.prefix,
            opts.endpoint,
            opts.mountpoint,
        )
        try:
            await _main_loop(opts)
        finally:
            await ops.files.close_all()
            await blocks.close()
            pyfuse3.close(unmount=True)
            log.info("unmounted %s; stats: %s", opts.mountpoint, fs.statistics())
        return 0
    finally:
        await client.close()
        if disk is not None:
            disk.close()


async def _main_loop(opts: MountOptions) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, pyfuse3.terminate)
    kib = opts.kernel_readahead_kb if opts.read_ahead == "auto" else 0  # "off": kernel default
    tuned = loop.create_task(asyncio.to_thread(set_kernel_readahead, opts.mountpoint, kib))
    try:
        await pyfuse3.main(min_tasks=4, max_tasks=128)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        with contextlib.suppress(Exception):
            await tuned
