"""A real single-node HDFS (Apache Hadoop 2.7.3 NameNode + DataNode) for tests.

    with HdfsCluster() as hdfs:          # start() + wait_ready(); stop() on exit
        client = hdfs_native.Client(hdfs.url)

Both daemons are plain `java` processes, each in its own process group, listening only on
127.0.0.1 on free ports, with their state in a fresh temp folder (`home`). The NameNode's
audit log goes to `audit_log` (a RollingFileAppender; pass `audit_max_file_size` small to make
it rotate). Permissions are on; the superuser is the OS user that runs the tests (root here),
members of `superusergroup` are superusers too; any other HADOOP_USER_NAME is a plain user.
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any
from xml.sax.saxutils import escape

from tests.support.hadoop import classpath
from tests.support.ports import (
    LOOPBACK,
    check_alive,
    free_port,
    http_get,
    poll_until,
    wait_for_port,
)

NAMENODE_CLASS = "org.apache.hadoop.hdfs.server.namenode.NameNode"
DATANODE_CLASS = "org.apache.hadoop.hdfs.server.datanode.DataNode"
AUDIT_LOGGER = "org.apache.hadoop.hdfs.server.namenode.FSNamesystem.audit"
# Bean that carries BytesRead; Hadoop 2.7 names it DataNodeActivity-<hostname>-<xfer port>.
DATANODE_ACTIVITY_QUERY = "Hadoop:service=DataNode,name=DataNodeActivity-*"

JVM_OPTS = [
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-Djava.net.preferIPv4Stack=true",
    "-Djava.security.egd=file:/dev/./urandom",
]


# Every daemon still running, so an interpreter exit without stop() does not leave JVMs behind.
_LIVE: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_LIVE):
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            proc.wait(5)
    _LIVE.clear()


def _site_xml(props: dict[str, str]) -> str:
    body = "".join(
        f"  <property><name>{escape(k)}</name><value>{escape(v)}</value></property>\n"
        for k, v in props.items()
    )
    return f'<?xml version="1.0"?>\n<configuration>\n{body}</configuration>\n'


LOG4J_TEMPLATE = """\
# Written by tests/support/hdfs.py. hadoop.log.dir / hadoop.log.file come from -D flags.
hadoop.log.dir=.
hadoop.log.file=hadoop.log
# Only the NameNode passes -Dhdfs.audit.logger=INFO,RFAAUDIT; the DataNode never opens the file.
hdfs.audit.logger=INFO,NullAppender

log4j.rootLogger=INFO,RFA
log4j.threshold=ALL

log4j.appender.NullAppender=org.apache.log4j.varia.NullAppender

log4j.appender.RFA=org.apache.log4j.RollingFileAppender
log4j.appender.RFA.File=${{hadoop.log.dir}}/${{hadoop.log.file}}
log4j.appender.RFA.MaxFileSize=256MB
log4j.appender.RFA.MaxBackupIndex=5
log4j.appender.RFA.layout=org.apache.log4j.PatternLayout
log4j.appender.RFA.layout.ConversionPattern=%d{{ISO8601}} %p %c: %m%n

log4j.logger.{audit_logger}=${{hdfs.audit.logger}}
log4j.additivity.{audit_logger}=false
log4j.appender.RFAAUDIT=org.apache.log4j.RollingFileAppender
log4j.appender.RFAAUDIT.File={audit_file}
log4j.appender.RFAAUDIT.MaxFileSize={audit_max}
log4j.appender.RFAAUDIT.MaxBackupIndex={audit_backups}
log4j.appender.RFAAUDIT.layout=org.apache.log4j.PatternLayout
log4j.appender.RFAAUDIT.layout.ConversionPattern=%d{{ISO8601}} %p %c{{2}}: %m%n

# Quiet noisy classes.
log4j.logger.org.apache.hadoop.util.NativeCodeLoader=ERROR
log4j.logger.org.apache.hadoop.metrics2=WARN
log4j.logger.org.mortbay=WARN
"""

# Refresh metrics (and the JMX view of them) every second instead of every 10 s.
METRICS2_PROPERTIES = "*.period=1\n"


def _http_json(url: str, timeout: float = 2.0) -> Any:
    return json.loads(http_get(url, timeout))


def _jmx_beans(base: str, query: str) -> list[dict[str, Any]]:
    url = f"{base}/jmx?qry={urllib.parse.quote(query, safe='')}"
    beans: list[dict[str, Any]] = _http_json(url).get("beans", [])
    return beans


def stop_group(proc: subprocess.Popen[Any], grace: float = 15.0) -> None:
    """SIGTERM the process group `proc` leads (started with start_new_session), SIGKILL it
    after `grace` seconds; the group is killed even if the leader is gone (it may have left
    children)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


@contextlib.contextmanager
def as_hdfs_user(user: str) -> Iterator[None]:
    """hdfs-native takes its user from HADOOP_USER_NAME when a client first connects."""
    old = os.environ.get("HADOOP_USER_NAME")
    os.environ["HADOOP_USER_NAME"] = user
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HADOOP_USER_NAME", None)
        else:
            os.environ["HADOOP_USER_NAME"] = old


class HdfsCluster:
    """One NameNode and one DataNode on loopback, in a fresh temp folder."""

    def __init__(
        self,
        *,
        audit_max_file_size: str = "256MB",
        audit_max_backup_index: int = 10,
        min_block_size: int = 1024,
        superusergroup: str = "supergroup",
        extra_conf: dict[str, str] | None = None,
        base_dir: str | Path | None = None,
        keep_home: bool = False,
        startup_timeout: float = 120.0,
    ) -> None:
        self.audit_max_file_size = audit_max_file_size
        self.audit_max_backup_index = audit_max_backup_index
        self.min_block_size = min_block_size
        self.superusergroup = superusergroup
        self.extra_conf = dict(extra_conf or {})
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self.keep_home = keep_home
        self.startup_timeout = startup_timeout
        # The OS user running the daemons is HDFS's superuser.
        self.superuser = getpass.getuser()

        self.namenode_port = 0
        self.namenode_http_port = 0
        self.datanode_port = 0
        self.datanode_ipc_port = 0
        self.datanode_http_port = 0
        self._home: Path | None = None
        self._formatted = False
        self.namenode_proc: subprocess.Popen[bytes] | None = None
        self.datanode_proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    # ---- addresses and paths -------------------------------------------------------------
    @property
    def home(self) -> Path:
        if self._home is None:
            raise RuntimeError("HdfsCluster not started")
        return self._home

    @property
    def url(self) -> str:
        return f"hdfs://{LOOPBACK}:{self.namenode_port}"

    @property
    def namenode_http(self) -> str:
        return f"http://{LOOPBACK}:{self.namenode_http_port}"

    @property
    def datanode_http(self) -> str:
        return f"http://{LOOPBACK}:{self.datanode_http_port}"

    @property
    def conf_dir(self) -> Path:
        return self.home / "conf"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def audit_log(self) -> Path:
        return self.logs_dir / "hdfs-audit.log"

    @property
    def namenode_log(self) -> Path:
        return self.logs_dir / "namenode.log"

    @property
    def datanode_log(self) -> Path:
        return self.logs_dir / "datanode.log"

    # ---- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> HdfsCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Format (first time), start both daemons and wait until a write+read round trip
        works. On any failure the processes already started are killed before re-raising."""
        t0 = time.monotonic()
        try:
            if self._home is None:
                self._home = Path(tempfile.mkdtemp(prefix="unionstore-hdfs-", dir=self.base_dir))
                self._pick_ports()
                self._write_conf()
            if not self._formatted:
                self._format()
            self._start_namenode_proc()
            self._start_datanode_proc()
            self.wait_ready()
        except BaseException:
            self._kill_all()
            raise
        self.startup_seconds = time.monotonic() - t0

    def stop(self) -> None:
        """Stop both daemons (TERM, then KILL) and remove the temp folder."""
        self._kill_all()
        if self._home is not None and not self.keep_home:
            shutil.rmtree(self._home, ignore_errors=True)
            self._home = None
            self._formatted = False

    def stop_namenode(self) -> None:
        """Stop only the NameNode (the DataNode keeps running and retrying)."""
        self._terminate(self.namenode_proc)
        self.namenode_proc = None

    def start_namenode(self, timeout: float | None = None) -> None:
        """Start the NameNode again on the same ports with the same metadata; wait until
        the DataNode has re-registered and the NameNode has left safe mode."""
        if self.namenode_proc is not None and self.namenode_proc.poll() is None:
            raise RuntimeError("NameNode is already running")
        try:
            self._start_namenode_proc()
            self.wait_ready(timeout)
        except BaseException:
            self._terminate(self.namenode_proc)
            self.namenode_proc = None
            raise

    def _kill_all(self) -> None:
        for attr in ("datanode_proc", "namenode_proc"):
            self._terminate(getattr(self, attr))
            setattr(self, attr, None)

    @staticmethod
    def _terminate(proc: subprocess.Popen[bytes] | None, grace: float = 15.0) -> None:
        if proc is None:
            return
        stop_group(proc, grace)
        _LIVE.discard(proc)

    # ---- setup ---------------------------------------------------------------------------
    def _pick_ports(self) -> None:
        ports: set[int] = set()
        while len(ports) < 5:
            ports.add(free_port())
        (
            self.namenode_port,
            self.namenode_http_port,
            self.datanode_port,
            self.datanode_ipc_port,
            self.datanode_http_port,
        ) = sorted(ports, key=lambda _: uuid.uuid4().int)

    def _write_conf(self) -> None:
        home = self.home
        for d in ("conf", "logs", "name", "data", "tmp"):
            (home / d).mkdir(parents=True, exist_ok=True)
        lo = LOOPBACK
        core = {
            "fs.defaultFS": self.url,
            "hadoop.tmp.dir": str(home / "tmp"),
            "hadoop.security.authentication": "simple",
            "hadoop.security.authorization": "false",
            "ipc.client.connect.max.retries": "3",
        }
        hdfs = {
            "dfs.namenode.name.dir": f"file://{home / 'name'}",
            "dfs.datanode.data.dir": f"file://{home / 'data'}",
            "dfs.namenode.rpc-address": f"{lo}:{self.namenode_port}",
            "dfs.namenode.rpc-bind-host": lo,
            "dfs.namenode.servicerpc-bind-host": lo,
            "dfs.namenode.http-address": f"{lo}:{self.namenode_http_port}",
            "dfs.namenode.http-bind-host": lo,
            "dfs.namenode.https-address": f"{lo}:0",
            "dfs.namenode.secondary.http-address": f"{lo}:0",
            "dfs.namenode.secondary.https-address": f"{lo}:0",
            "dfs.namenode.backup.address": f"{lo}:0",
            "dfs.namenode.backup.http-address": f"{lo}:0",
            "dfs.datanode.address": f"{lo}:{self.datanode_port}",
            "dfs.datanode.ipc.address": f"{lo}:{self.datanode_ipc_port}",
            "dfs.datanode.http.address": f"{lo}:{self.datanode_http_port}",
            "dfs.datanode.https.address": f"{lo}:0",
            "dfs.datanode.hostname": lo,
            "dfs.namenode.datanode.registration.ip-hostname-check": "false",
            "dfs.webhdfs.enabled": "false",
            "dfs.replication": "1",
            "dfs.namenode.safemode.extension": "0",
            "dfs.namenode.safemode.min.datanodes": "1",
            "dfs.permissions.enabled": "true",
            "dfs.permissions.superusergroup": self.superusergroup,
            "dfs.namenode.fs-limits.min-block-size": str(self.min_block_size),
            "dfs.namenode.acls.enabled": "true",
            "dfs.heartbeat.interval": "1",
            "dfs.datanode.du.reserved": "0",
            "dfs.namenode.resource.du.reserved": "0",
            "dfs.namenode.handler.count": "10",
            "dfs.datanode.handler.count": "4",
            "dfs.datanode.max.transfer.threads": "256",
            "dfs.blockreport.initialDelay": "0",
        }
        hdfs.update(self.extra_conf)
        conf = self.conf_dir
        (conf / "core-site.xml").write_text(_site_xml(core))
        (conf / "hdfs-site.xml").write_text(_site_xml(hdfs))
        (conf / "log4j.properties").write_text(
            LOG4J_TEMPLATE.format(
                audit_logger=AUDIT_LOGGER,
                audit_file=self.audit_log,
                audit_max=self.audit_max_file_size,
                audit_backups=self.audit_max_backup_index,
            )
        )
        (conf / "hadoop-metrics2.properties").write_text(METRICS2_PROPERTIES)

    def _java_cmd(
        self, main_class: str, log_file: str, *args: str, audit: bool = False
    ) -> list[str]:
        tmp = self.home / "tmp"  # Jetty's work folders: removed with the cluster's folder
        tmp.mkdir(exist_ok=True)
        cmd = [
            "java",
            *JVM_OPTS,
            f"-Djava.io.tmpdir={tmp}",
            f"-Dhadoop.log.dir={self.logs_dir}",
            f"-Dhadoop.log.file={log_file}",
            f"-Dhadoop.home.dir={self.home}",
            f"-Dlog4j.configuration=file:{self.conf_dir / 'log4j.properties'}",
        ]
        if audit:
            cmd.append("-Dhdfs.audit.logger=INFO,RFAAUDIT")
        cmd += ["-cp", classpath(self.conf_dir), main_class, *args]
        return cmd

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The daemons run as the OS user; a test's HADOOP_USER_NAME must not leak into them.
        for k in ("HADOOP_USER_NAME", "HADOOP_PROXY_USER", "HADOOP_CONF_DIR", "CLASSPATH"):
            env.pop(k, None)
        env["HADOOP_CONF_DIR"] = str(self.conf_dir)
        return env

    def _spawn(self, cmd: list[str], out_name: str) -> subprocess.Popen[bytes]:
        with open(self.logs_dir / out_name, "ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.home,
                env=self._env(),
                start_new_session=True,  # own process group: killpg reaches every child
            )
        _LIVE.add(proc)
        return proc

    def _format(self) -> None:
        cmd = self._java_cmd(NAMENODE_CLASS, "format.log", "-format", "-nonInteractive")
        proc = self._spawn(cmd, "format.out")
        try:
            rc = proc.wait(self.startup_timeout)
        except subprocess.TimeoutExpired:
            self._terminate(proc)
            raise
        finally:
            self._terminate(proc)
        if rc != 0:
            log = self.logs_dir / "format.log"
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            raise RuntimeError(f"NameNode -format failed with code {rc}:\n{tail}")
        self._formatted = True

    def _start_namenode_proc(self) -> None:
        cmd = self._java_cmd(NAMENODE_CLASS, "namenode.log", audit=True)
        self.namenode_proc = self._spawn(cmd, "namenode.out")

    def _start_datanode_proc(self) -> None:
        cmd = self._java_cmd(DATANODE_CLASS, "datanode.log")
        self.datanode_proc = self._spawn(cmd, "datanode.out")

    # ---- readiness -----------------------------------------------------------------------
    def namenode_jmx(self, query: str) -> list[dict[str, Any]]:
        return _jmx_beans(self.namenode_http, query)

    def datanode_jmx(self, query: str) -> list[dict[str, Any]]:
        return _jmx_beans(self.datanode_http, query)

    def _check_alive(self) -> None:
        check_alive(self.namenode_proc, "NameNode", self.namenode_log)
        check_alive(self.datanode_proc, "DataNode", self.datanode_log)

    def _namenode_ready(self) -> bool:
        self._check_alive()
        state = self.namenode_jmx("Hadoop:service=NameNode,name=FSNamesystemState")
        info = self.namenode_jmx("Hadoop:service=NameNode,name=NameNodeInfo")
        if not state or not info:
            return False
        live = int(state[0].get("NumLiveDataNodes", 0))
        safemode = str(info[0].get("Safemode", "x"))
        return live >= 1 and safemode == ""

    def _datanode_ready(self) -> bool:
        self._check_alive()
        return bool(self.datanode_jmx(DATANODE_ACTIVITY_QUERY))

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the NameNode RPC port is open, a DataNode is live, safe mode is off and
        the DataNode's HTTP/JMX answers; then prove it with a write+read round trip."""
        timeout = self.startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(1.0, deadline - time.monotonic())

        wait_for_port(LOOPBACK, self.namenode_port, left(), self.namenode_proc, self.namenode_log)
        poll_until(
            self._namenode_ready,
            left(),
            "NameNode out of safe mode with a live DataNode",
            proc=self.namenode_proc,
            log=self.namenode_log,
        )
        poll_until(
            self._datanode_ready,
            left(),
            "DataNode JMX",
            proc=self.datanode_proc,
            log=self.datanode_log,
        )
        poll_until(self._round_trip, left(), "HDFS write+read round trip", log=self.namenode_log)

    def _round_trip(self) -> bool:
        import hdfs_native

        self._check_alive()
        payload = uuid.uuid4().bytes * 64
        path = f"/.unionstore-ready-{uuid.uuid4().hex}"
        with as_hdfs_user(self.superuser):
            client = hdfs_native.Client(self.url)
            try:
                with client.create(path) as w:
                    w.write(payload)
                with client.read(path) as r:
                    got = r.read()
            finally:
                with contextlib.suppress(Exception):
                    client.delete(path)
        if got != payload:
            raise RuntimeError(f"round trip read {len(got)} bytes, wrote {len(payload)}")
        return True

    # ---- metrics -------------------------------------------------------------------------
    def datanode_bytes_read(self) -> int:
        """Total BytesRead over the DataNode's DataNodeActivity-* JMX beans (refreshed about
        once a second, so poll for a change rather than expecting it at once)."""
        beans = self.datanode_jmx(DATANODE_ACTIVITY_QUERY)
        if not beans:
            raise RuntimeError(f"no JMX bean matches {DATANODE_ACTIVITY_QUERY}")
        return sum(int(b.get("BytesRead", 0)) for b in beans)
