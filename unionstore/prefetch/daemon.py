"""The prefetch daemon: NameNode audit events -> invalidations and warms on every gateway.

::

    LogFollower -> AuditParser -> plan(event) -> Slot per (bucket, key) -> Delivery -> gateways
        ^                            |  Ticket: one event, finished when all its work is done
        |                            +-> Settler (created files: warm once renamed into place,
        |                                 or once size+mtime stood still for `settle` seconds)
        +-- Ledger (per log) <- Ticket finished; the state file is rewritten after each change

- Delivery is at least once: an event is *finished* only when every gateway acknowledged its
  work; the persisted position never passes an unfinished event, and events finished out of
  order are persisted by id (Ledger), so a restart redoes exactly the unfinished ones.
- Bounded: reading pauses while ``max_pending`` events are tracked (the log is the queue).
- De-duplication: work for one (bucket, key) merges in its Slot while it waits: any number of
  events become at most one invalidation followed by at most one warm, run in that order.
  An event's warms start only after its own invalidations are done.
- Warms in flight are capped (:class:`PriorityGate`, highest rule priority first); a gateway
  that fails is retried with exponential backoff until it answers (``Delivery``).
- Freshness: create/append/truncate/concat/delete/rename drop metadata and cached blocks of
  the paths they touch; setPermission/setOwner/setTimes/ACL changes drop metadata.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unionstore.admin_client import AdminClient
from unionstore.prefetch.audit import AuditEvent, AuditParser
from unionstore.prefetch.hdfsstat import HdfsStat
from unionstore.prefetch.metrics import Metrics, serve_metrics
from unionstore.prefetch.rules import Rule, RuleSet, Target
from unionstore.prefetch.settle import Settler
from unionstore.prefetch.tail import Ledger, Line, LogFollower, Position, write_atomic
from unionstore.prefetch.warm import Delivery, PriorityGate

log = logging.getLogger("unionstore.prefetch")

CONTENT = {"create", "append", "truncate"}
METADATA = {
    "setPermission",
    "setOwner",
    "setTimes",
    "setAcl",
    "modifyAclEntries",
    "removeAcl",
    "removeAclEntries",
    "removeDefaultAcl",
    "setReplication",
}
HANDLED = CONTENT | METADATA | {"rename", "delete", "concat"}
STATE_FILE = "prefetch-state.json"


@dataclass
class DaemonConfig:
    audit_logs: list[Path]
    rules: RuleSet
    state_dir: Path
    settle: float = 30.0
    max_settle_wait: float = 3600.0
    max_pending: int = 10_000
    max_warms: int = 4
    poll_interval: float = 0.1
    from_start: bool = False
    metrics_listen: str | None = None


@dataclass(eq=False)
class Ticket:
    """One event being worked on; finished when its last hold is released."""

    log: _Log
    line: Line
    event: AuditEvent
    on_finish: Callable[[Ticket], None]
    holds: int = 1  # the planning hold, released once all work is attached

    def hold(self) -> Ticket:
        self.holds += 1
        return self

    def release(self) -> None:
        self.holds -= 1
        if self.holds == 0:
            self.on_finish(self)


@dataclass(eq=False)
class Slot:
    target: Target
    invalidate: bool = False
    data: bool = False
    inv_waiters: list[tuple[Ticket, asyncio.Future[None]]] = field(default_factory=list)
    warm: bool = False
    priority: int = 0
    warm_tickets: list[Ticket] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


@dataclass(eq=False)
class _Log:
    path: Path
    follower: LogFollower
    ledger: Ledger
    rotations: int = 0
    truncations: int = 0


class Daemon:
    def __init__(
        self,
        cfg: DaemonConfig,
        gateways: list[AdminClient],
        stat: HdfsStat | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg, self.stat, self.clock = cfg, stat, clock
        self.metrics = Metrics()
        self.delivery = Delivery(gateways, self.metrics.observe_call)
        self.parser = AuditParser()
        self.gate = PriorityGate(cfg.max_warms)
        self.slots: dict[Target, Slot] = {}
        self.settler = (
            None
            if stat is None
            else Settler[Ticket](stat, cfg.settle, cfg.max_settle_wait, clock, self._complete)
        )
        self.tickets: dict[Ticket, None] = {}  # unfinished, in read order
        self.handled: dict[str, int] = {}
        self.logs: list[_Log] = []
        self._tasks: set[asyncio.Future[None]] = set()
        self._dirty = asyncio.Event()
        self._closing = False
        self._lock_fd: int | None = None
        self.metrics.lag.set_function(self._lag)
        self.metrics.pending.set_function(lambda: len(self.tickets))

    # ---- state ----------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.cfg.state_dir / STATE_FILE

    def load(self) -> None:
        """Lock the state folder, read the state file, position every follower."""
        self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.cfg.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another daemon uses {self.cfg.state_dir}") from None
        state: dict[str, Any] = {}
        if self.state_path.exists():
            state = json.loads(self.state_path.read_text())
        self.handled = {str(k): int(v) for k, v in state.get("handled", {}).items()}
        saved = state.get("logs", {})
        for p in self.cfg.audit_logs:
            entry = saved.get(str(p.absolute()), {})
            follower, pos = LogFollower(p), entry.get("position")
            follower.start(Position.from_json(pos) if pos else None, from_start=self.cfg.from_start)
            ledger = Ledger(follower.position, entry.get("done", []))
            self.logs.append(_Log(p, follower, ledger))
            at = follower.position
            log.info(
                "%s: %s at inode %d offset %d (%d finished events ahead)",
                p,
                "resuming" if pos else "starting",
                at.file.inode,
                at.offset,
                len(entry.get("done", [])),
            )

    def snapshot(self) -> bytes:
        logs = {}
        for lg in self.logs:
            pos, done = lg.ledger.checkpoint()
            logs[str(lg.path.absolute())] = {
                "position": pos.to_json(),
                "done": done,
            }
        return json.dumps({"version": 1, "logs": logs, "handled": self.handled}).encode()

    async def _committer(self) -> None:
        """Writes the state after every change (changes during a write coalesce); never
        cancelled, so a write in a thread cannot land after the final one."""
        while not (self._closing and not self._dirty.is_set()):
            await self._dirty.wait()
            self._dirty.clear()
            data = self.snapshot()
            await asyncio.to_thread(write_atomic, self.state_path, data)

    # ---- reading --------------------------------------------------------------------------
    async def _reader(self) -> None:
        while True:
            progressed = False
            for lg in self.logs:
                budget = self.cfg.max_pending - sum(x.ledger.outstanding for x in self.logs)
                if budget <= 0:
                    break
                lines = lg.follower.poll(min(budget, 5000))
                for line in lines:
                    self._on_line(lg, line)
                lg.ledger.advance(lg.follower.position)
                self._count_files(lg)
                progressed = progressed or bool(lines)
            if progressed:
                self._dirty.set()
                await asyncio.sleep(0)  # let the work run while a backlog is read
            else:
                await asyncio.sleep(self.cfg.poll_interval)

    def _count_files(self, lg: _Log) -> None:
        f, label = lg.follower, str(lg.path)
        self.metrics.rotations.labels(label).inc(f.rotations - lg.rotations)
        self.metrics.truncations.labels(label).inc(f.truncations - lg.truncations)
        lg.rotations, lg.truncations = f.rotations, f.truncations

    def _on_line(self, lg: _Log, line: Line) -> None:
        self.metrics.lines.labels(str(lg.path)).inc()
        if lg.ledger.already_done(line):
            self.metrics.events.labels("already_done").inc()
            return
        before = (self.parser.garbage, self.parser.denied)
        ev = self.parser.parse(line.data)
        if ev is None:
            outcome = "garbage" if self.parser.garbage > before[0] else "denied"
            self.metrics.events.labels(outcome).inc()
            return
        self.metrics.events.labels("parsed").inc()
        paths = [*ev.srcs, *([ev.dst] if ev.dst else [])]
        if ev.cmd not in HANDLED or not any(self.cfg.rules.targets(p) for p in paths):
            return
        self.metrics.matched.labels(ev.cmd).inc()
        ticket = Ticket(lg, line, ev, self._finished)
        lg.ledger.track(line, lg.follower.position.mtime_ns)
        self.tickets[ticket] = None
        self._plan(ev, ticket)
        ticket.release()

    def _finished(self, ticket: Ticket) -> None:
        self.tickets.pop(ticket, None)
        ticket.log.ledger.finish(ticket.line.id)
        self.handled[ticket.event.cmd] = self.handled.get(ticket.event.cmd, 0) + 1
        self.metrics.handled.labels(ticket.event.cmd).inc()
        self._dirty.set()

    def _lag(self) -> float:
        first = next(iter(self.tickets), None)
        t = first.event.time if first is not None else None
        return max(0.0, self.clock() - t) if t is not None else 0.0

    # ---- planning -------------------------------------------------------------------------
    def _plan(self, ev: AuditEvent, ticket: Ticket) -> None:
        rules, src, dst = self.cfg.rules, ev.src or "", ev.dst
        if ev.cmd in METADATA:
            self._invalidate_path(src, False, ticket)
        elif ev.cmd in CONTENT:
            self._invalidate_path(src, True, ticket)
            if self.settler is not None:  # once complete: warm it, or at least refresh it
                self.settler.add(src, rules.warm_rule(src), ticket)
        elif ev.cmd == "delete":
            self._forget_created(src)
            self._invalidate_path(src, True, ticket)
        elif ev.cmd in ("rename", "concat") and dst:
            for s in ev.srcs:
                self._forget_created(s)
            waits = [f for s in ev.srcs for f in self._invalidate_path(s, True, ticket)]
            waits += self._invalidate_path(dst, True, ticket)
            self._spawn(self._warm_after(waits, dst, ticket.hold()))

    def _invalidate_path(self, path: str, data: bool, ticket: Ticket) -> list[Any]:
        futures: list[asyncio.Future[None]] = []
        for target in self.cfg.rules.targets(path):
            slot = self._slot(target)
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            slot.invalidate, slot.data = True, slot.data or data
            slot.inv_waiters.append((ticket.hold(), fut))
            futures.append(fut)
            self._kick(slot)
        return futures

    def _warm(self, rule: Rule, path: str, ticket: Ticket) -> None:
        slot = self._slot(rule.target(path))
        slot.warm, slot.priority = True, max(slot.priority, rule.priority)
        slot.warm_tickets.append(ticket.hold())
        self._kick(slot)

    async def _warm_after(self, waits: list[Any], path: str, ticket: Ticket) -> None:
        """Warm ``path`` (a file, or every file of a folder) once the event's invalidations
        are through; checks sizes when rules limit them."""
        await asyncio.gather(*waits)
        rules = self.cfg.rules
        if not rules.may_warm_under(path):
            pass
        elif self.stat is None:
            rule = rules.warm_rule(path)
            if rule is not None and not rule.has_size_limits:
                self._warm(rule, path, ticket)
        else:
            for fpath, size in await self._files(path):
                rule = rules.warm_rule(fpath)
                if rule is not None and rule.size_ok(size):
                    self._warm(rule, fpath, ticket)
                elif rule is not None:
                    self.metrics.skipped.labels("size").inc()
        ticket.release()

    async def _files(self, path: str) -> list[tuple[str, int]]:
        """The files at or under ``path``; while HDFS does not answer, ask again."""
        assert self.stat is not None
        delay = 0.5
        while True:
            try:
                return await self.stat.files(path)
            except PermissionError as exc:
                log.error("cannot stat %s: %s", path, exc)
                return []
            except Exception as exc:
                log.warning("stat %s: %s; again in %.1fs", path, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    # ---- slots: one (bucket, key), invalidate before warm ---------------------------------
    def _slot(self, target: Target) -> Slot:
        slot = self.slots.get(target)
        if slot is None:
            slot = self.slots[target] = Slot(target)
        return slot

    def _kick(self, slot: Slot) -> None:
        if slot.task is None:
            slot.task = asyncio.create_task(self._run_slot(slot))

    async def _run_slot(self, slot: Slot) -> None:
        t = slot.target
        try:
            while slot.invalidate or slot.warm:
                if slot.invalidate:
                    data, waiters = slot.data, slot.inv_waiters
                    slot.invalidate, slot.data, slot.inv_waiters = False, False, []
                    # exact: the key and what is under "key/", not "key.bin" beside it
                    if all(await self.delivery.invalidate(t.bucket, t.key, data, exact=True)):
                        self.metrics.invalidated.inc()
                    self._observe(self.metrics.invalidate_lag, [tk for tk, _ in waiters])
                    for tk, fut in waiters:
                        if not fut.done():
                            fut.set_result(None)
                        tk.release()
                    continue
                tickets, priority = slot.warm_tickets, slot.priority
                slot.warm, slot.priority, slot.warm_tickets = False, 0, []
                async with self.gate.hold(priority):
                    results = await self.delivery.warm(t.bucket, t.key)
                if all(results):
                    self.metrics.warmed.inc()
                else:
                    self.metrics.skipped.labels("missing").inc()
                self._observe(self.metrics.warm_lag, tickets)
                for tk in tickets:
                    tk.release()
        finally:
            slot.task = None
            if not (slot.invalidate or slot.warm) and self.slots.get(t) is slot:
                del self.slots[t]

    def _observe(self, hist: Any, tickets: list[Ticket]) -> None:
        now = self.clock()
        for tk in tickets:
            if tk.event.time is not None:
                hist.observe(max(0.0, now - tk.event.time))

    # ---- created files, once complete (see settle.py) -----------------------------------
    def _forget_created(self, path: str) -> None:
        if self.settler is not None:
            self.settler.drop(path)

    def _complete(self, path: str, rule: Rule | None, holds: list[Ticket], size: int) -> None:
        """A created/appended file stood still: warm it (the gateway stats it afresh), or
        drop the metadata a reader may have cached while it was being written."""
        for work in holds:
            if rule is not None and rule.size_ok(size):
                self._warm(rule, path, work)
            else:
                self._invalidate_path(path, False, work)
            work.release()
        if rule is not None and not rule.size_ok(size):
            self.metrics.skipped.labels("size").inc()

    # ---- running --------------------------------------------------------------------------
    def _spawn(self, coro: Awaitable[None]) -> asyncio.Future[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)
        return task

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set; then cancel what is in flight and persist the state."""
        self.load()
        server = await serve_metrics(self.cfg.metrics_listen, self.metrics)
        essential = [self._spawn(self._reader()), asyncio.create_task(self._committer())]
        if self.settler is not None:
            essential.append(self._spawn(self.settler.run()))

        def ended(_: object) -> None:  # one of them ending early is a bug: stop, do not limp
            if not self._closing:
                stop.set()

        for task in essential:
            task.add_done_callback(ended)
        try:
            await stop.wait()
        finally:
            pending = [*self._tasks, *(s.task for s in self.slots.values() if s.task)]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            log.info(
                "stopping; %d unfinished events will be done at the next start", len(self.tickets)
            )
            self._closing = True
            self._dirty.set()
            try:
                await essential[1]  # the last write: unfinished events stay unfinished
            finally:
                if server is not None:
                    server.close()
                    await server.wait_closed()
                for lg in self.logs:
                    lg.follower.close()
                if self._lock_fd is not None:
                    os.close(self._lock_fd)
            for task in essential:
                if not task.cancelled() and task.exception() is not None:
                    raise RuntimeError("prefetch daemon failed") from task.exception()


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("prefetch task failed", exc_info=task.exception())
