"""Hadoop 2.7.3 jars for the real-HDFS test fixtures, taken from the PyPI sdist pyspark==2.4.8.

The sdist ships Hadoop's client and server jars in `deps/jars`. This module downloads the sdist
once (if needed), extracts only those jars into a cache folder, and adds the empty `webapps/*`
folders that Hadoop's HTTP servers look up on the classpath (the jars lack them).

Cache: ${XDG_CACHE_HOME:-~/.cache}/unionstore/
    sdist/pyspark-2.4.8.tar.gz
    hadoop-jars/*.jar
    hadoop-jars/webapps/{hdfs,datanode,static}/   (hadoop-jars/ itself goes on the classpath)

Run `python -m tests.support.hadoop` to prepare the cache; it prints the jar folder.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import venv
from pathlib import Path

PYSPARK_VERSION = "2.4.8"
HADOOP_VERSION = "2.7.3"
SDIST_NAME = f"pyspark-{PYSPARK_VERSION}.tar.gz"
JARS_SUBDIR = "deps/jars/"
WEBAPPS = ("hdfs", "datanode", "static")
# A jar whose presence says the extraction finished (the folder appears by an atomic rename).
MARKER_JAR = f"hadoop-hdfs-{HADOOP_VERSION}.jar"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "unionstore"


def jars_dir() -> Path:
    return cache_dir() / "hadoop-jars"


def sdist_path() -> Path:
    return cache_dir() / "sdist" / SDIST_NAME


def classpath(*extra_dirs: Path) -> str:
    """A java -cp value: the given folders (conf dirs), the jar folder itself (for webapps/)
    and every jar in it."""
    jars = ensure_jars()
    parts = [str(p) for p in extra_dirs] + [str(jars), str(jars / "*")]
    return os.pathsep.join(parts)


def _pip_python() -> str:
    """A Python whose pip can run pyspark's setup.py (needs setuptools and wheel)."""
    if all(importlib.util.find_spec(m) is not None for m in ("pip", "setuptools", "wheel")):
        return sys.executable
    tool_venv = cache_dir() / "pip-venv"
    py = tool_venv / "bin" / "python"
    if not py.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(tool_venv)
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "-U", "pip", "setuptools", "wheel"], check=True
    )
    return str(py)


def ensure_sdist() -> Path:
    """Return the cached pyspark sdist, downloading it with pip first if it is missing."""
    target = sdist_path()
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"downloading pyspark=={PYSPARK_VERSION} sdist (~220 MB, once) into {target.parent}",
        file=sys.stderr,
        flush=True,
    )
    # Download into a temp folder beside the target, then move: a half-finished download
    # never looks like a cached sdist.
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        subprocess.run(
            [
                _pip_python(),
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-build-isolation",
                "--no-binary",
                ":all:",
                "-d",
                tmp,
                f"pyspark=={PYSPARK_VERSION}",
            ],
            check=True,
        )
        got = Path(tmp) / SDIST_NAME
        if not got.is_file():
            raise RuntimeError(f"pip download did not produce {SDIST_NAME}: {os.listdir(tmp)}")
        os.replace(got, target)
    return target


def _extract_jars(sdist: Path, dest: Path) -> int:
    count = 0
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/", 1)
            if len(parts) != 2 or not member.isfile():
                continue
            inner = parts[1]
            if not inner.startswith(JARS_SUBDIR) or not inner.endswith(".jar"):
                continue
            name = inner[len(JARS_SUBDIR) :]
            if "/" in name or not name:
                continue
            src = tar.extractfile(member)
            if src is None:
                continue
            with src, open(dest / name, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            count += 1
    return count


def _complete(d: Path) -> bool:
    return (d / MARKER_JAR).is_file() and all((d / "webapps" / w).is_dir() for w in WEBAPPS)


def ensure_jars() -> Path:
    """Return the folder holding the Hadoop 2.7.3 jars (and webapps/), preparing it if needed."""
    target = jars_dir()
    if _complete(target):
        return target
    sdist = ensure_sdist()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".hadoop-jars-"))
    try:
        n = _extract_jars(sdist, tmp)
        if not (tmp / MARKER_JAR).is_file():
            raise RuntimeError(f"{sdist} has no {JARS_SUBDIR}{MARKER_JAR} ({n} jars found)")
        for w in WEBAPPS:
            (tmp / "webapps" / w).mkdir(parents=True, exist_ok=True)
        if target.exists() and not _complete(target):
            shutil.rmtree(target)  # a leftover from an older layout
        try:
            os.rename(tmp, target)
        except OSError:
            if not _complete(target):  # someone else did not win the race either
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def main() -> int:
    path = ensure_jars()
    n = len(list(path.glob("*.jar")))
    print(f"hadoop {HADOOP_VERSION} jars ready: {path} ({n} jars)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
