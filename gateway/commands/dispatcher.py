"""Send queued commands to the devices this worker holds, and follow each exchange.

One ``CommandDispatcher`` per worker (design.md section 8):

- finding work: PostgreSQL notifies every worker of a queued row (``hj212_command``);
  SQLite is polled. A worker keeps the set of MNs with queued commands, and tries to claim
  one when such a device is (or becomes) connected to it. The claim is one atomic
  statement in the database, so two workers never both send a command.
- one command per device at a time; the next is claimed when the current one ends.
- correlation by (MN, QN) on the packets the hub admits: 9011 (QnRtn), 9012 (ExeRtn),
  9013 (notifications), data answers with the request's CN and QN (get-type), and
  uploads of the requested CN with fresh QNs while a history fetch runs (counted here;
  stored and acked with 9014 by the normal upload path).
- timeouts: no 9011 within OverTime -> the same frame again (same QN), up to ReCount
  times (the device's values when set with a 1000 that succeeded, else the configured
  ones), then ``failed``/``no_answer``; after QnRtn=1 a result timeout per pattern.
- database writes of an exchange go through one queue, in order, off the packet path.
- clock skew of every real-time upload (``skew.SkewTracker``) -> presence and a
  histogram; a device whose clock is off gets an automatic 1012 (bounded per period and
  by unanswered tries, decided in the database).

Only this module reads clocks for commands; the decisions it delegates (``flows``,
``skew``) take the time as an argument.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from config import Settings
from gateway.commands import flows
from gateway.commands.skew import SkewTracker
from gateway.periodic import every
from protocol import (
    Packet,
    ProtocolError,
    QnGenerator,
    command,
    get_profile,
    parse_time_us,
    profile_for_version,
)
from protocol.encode import VERSION_BITS
from storage import StorageError
from storage.commands import ClockSkewRow, CommandListener, CommandStore

if TYPE_CHECKING:
    from gateway.connection import DeviceConnection
    from gateway.hub import Hub
    from gateway.metrics import Metrics

US: Final = 1_000_000
# Finished (MN, QN) pairs remembered so that an answer arriving after the end is counted
# as late rather than unmatched: a few minutes of a busy platform's commands.
RECENT_FINISHED: Final = 4_096
# Database writes of exchanges waiting for the database. Commands are rare (a handful per
# device per day), so this is never reached unless the database is down for long; then
# history progress updates are dropped first (the final state carries the counts).
OPS_MAX: Final = 10_000
# Devices whose connection details (and clock-skew runs) are remembered per worker. Far
# above the 19,000 connections one worker holds, so a real fleet is never forgotten; it
# bounds what a peer inventing MNs (auth.policy open) can make us hold: ~300 B each.
TRACKED_MNS_MAX: Final = 200_000
# A failed write of an exchange is tried this many times, with this pause doubling from
# OP_RETRY_S, before it is logged and dropped (the abandoned sweep then settles the row).
OP_TRIES: Final = 5
OP_RETRY_S: Final = 0.5
# On stop, queued writes get this long to reach the database.
STOP_DRAIN_S: Final = 5.0
# Reconnect pause of the LISTEN connection.
LISTEN_RETRY_S: Final = 2.0
# An answer keeps at most this many CP keys and data codes per packet, so a device that
# floods its answer cannot grow a row without bound.
ANSWER_KEYS_MAX: Final = 200
# Real-time uploads measure the clock; their CN.
REALTIME_CN: Final = "2011"
TIME_REQUEST_CN: Final = "1013"
_ANSWER_CNS: Final = frozenset({"9011", "9012", "9013"})


@dataclass(slots=True)
class _Peer:
    """What the last packets of a device on this worker said about it."""

    conn_id: int
    pw: str | None
    st: str | None
    version: str


@dataclass(slots=True)
class _Exchange:
    id: int
    mn: str
    cn: str
    qn: str
    pattern: str
    params: dict[str, str]
    profile_name: str | None
    registry_pw: str | None
    attempts: int
    max_attempts: int
    over_time_s: float
    state: str = "sent"
    qn_rtn: int | None = None
    ack_us: int | None = None
    answers: list[dict[str, Any]] = field(default_factory=list)
    uploads: int = 0
    records: int = 0
    first_data_time: str | None = None
    last_data_time: str | None = None
    timer: asyncio.TimerHandle | None = None

    def answer(self) -> Any:
        if self.pattern == flows.HISTORY:
            return {
                "uploads": self.uploads,
                "records": self.records,
                "first_data_time": self.first_data_time,
                "last_data_time": self.last_data_time,
            }
        if not self.answers:
            return None
        return {"packets": self.answers}


def _bounded(values: dict[str, Any]) -> dict[str, Any]:
    if len(values) <= ANSWER_KEYS_MAX:
        return dict(values)
    return dict(list(values.items())[:ANSWER_KEYS_MAX])


class CommandDispatcher:
    """Commands of one worker; ``start()`` after the hub exists, ``stop()`` before the
    store closes. The hub calls ``on_claim``, ``on_packet`` and ``on_refused``."""

    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        store: CommandStore,
        metrics: Metrics,
        log: Any,
        *,
        worker: int,
        utc_offset_us: int,
        listen_dsn: str | None = None,
    ) -> None:
        self.cfg = settings.commands
        self.settings = settings
        self.hub = hub
        self.store = store
        self.metrics = metrics
        self.log = log
        self.worker = worker
        self.utc_offset_us = utc_offset_us
        self._listen_dsn = listen_dsn
        self._loop = asyncio.get_running_loop()
        self._inflight: dict[str, _Exchange] = {}
        self._peers: dict[str, _Peer] = {}
        self._queued_mns: set[str] = set()
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._ops: asyncio.Queue[tuple[str, Callable[[], Awaitable[Any]], str | None]] = (
            asyncio.Queue(OPS_MAX)
        )
        self._finished: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._qn = QnGenerator()
        c = self.cfg
        self._skew = SkewTracker(
            threshold_s=c.clock_skew_threshold_s,
            packets=c.clock_skew_packets,
            spread_s=c.clock_skew_spread_s,
            period_s=c.clock_skew_period_s,
            window_s=c.realtime_window_s,
            max_devices=TRACKED_MNS_MAX,
        )
        self._skews: dict[str, tuple[float, int, str, str]] = {}
        """MN -> (skew_s, measured_us, peer, version), latest since the last flush."""
        self._long_cns = frozenset(c.long_running_cns)
        self._tasks: list[asyncio.Task[None]] = []
        self._side: set[asyncio.Task[None]] = set()
        self._listener: CommandListener | None = None
        self._stopping = False

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._spawn(self._op_loop())
        self._spawn(self._pump_loop())
        polling = self._listen_dsn is None
        interval = self.cfg.poll_interval_s if polling else self.cfg.sweep_interval_s
        self._spawn(every(interval, self._sweep, self.log, "command job failed"))
        self._spawn(
            every(
                self.settings.storage.presence_interval_s,
                self._flush_skews,
                self.log,
                "command job failed",
            )
        )
        if self._listen_dsn is not None:
            self._listener = CommandListener(self._listen_dsn, retry_s=LISTEN_RETRY_S)
            self._spawn(
                self._listener.run(self._on_notify, self._on_listen_ready, self._on_listen_error)
            )
        await self._sweep()

    async def stop(self) -> None:
        """Stop sending: a command still waiting for its 9011 goes back to the queue (the
        device gets it again from whichever worker holds it next); one already
        acknowledged fails (``shutdown``): its result would arrive here no more."""
        if self._stopping:
            return
        self._stopping = True
        op_task, others = self._tasks[0], [*self._tasks[1:], *self._side]
        for task in others:
            task.cancel()
        for task in others:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        now_us = _now_us()
        for ex in list(self._inflight.values()):
            if ex.state == "sent":
                self._drop(ex)
                self._op("requeue", functools.partial(self.store.requeue, ex.id))
            else:
                self._finish(ex, "failed", now_us, reason="shutdown")
        with contextlib.suppress(StorageError):
            await self._flush_skews()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_DRAIN_S):
                await self._ops.join()
        op_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await op_task

    def _spawn(self, coro: Any) -> None:
        self._tasks.append(self._loop.create_task(coro))

    # -- finding work ---------------------------------------------------------------------

    def _want(self, mn: str) -> None:
        self._pending.add(mn)
        self._wake.set()

    def _on_notify(self, _command_id: int, state: str, mn: str) -> None:
        if state == "queued":
            self._queued_mns.add(mn)
            if mn in self.hub.sessions:
                self._want(mn)

    def _on_listen_ready(self) -> None:
        # Notifications sent while the connection was down are lost: look at the table.
        if not self._stopping:
            task = self._loop.create_task(self._sweep_logged())
            self._side.add(task)
            task.add_done_callback(self._side.discard)

    def _on_listen_error(self, exc: BaseException) -> None:
        if not self._stopping:
            self.log.warning("command LISTEN connection failed", error=str(exc))

    async def _sweep_logged(self) -> None:
        try:
            await self._sweep()
        except Exception as exc:
            self.log.warning("command job failed", job="_sweep", error=str(exc))

    async def _sweep(self) -> None:
        """Expire what waited too long, settle what a dead worker left, find queued work."""
        now_us = _now_us()
        for _id, cn in await self.store.expire(now_us=now_us, ttl_s=self.cfg.ttl_s):
            self.metrics.commands.labels(self._cn_label(cn), "expired").inc()
        for _id, cn in await self.store.abandon(
            now_us=now_us,
            grace_s=self.cfg.abandoned_after_s,
            keep=[ex.id for ex in self._inflight.values()],
        ):
            self.metrics.commands.labels(self._cn_label(cn), "failed").inc()
        self._queued_mns = await self.store.queued_mns()
        sessions = self.hub.sessions
        for mn in self._queued_mns:
            if mn in sessions and mn not in self._inflight:
                self._want(mn)

    async def _pump_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending, self._pending = self._pending, set()
            for mn in pending:
                if mn in self._inflight or mn not in self.hub.sessions or self._stopping:
                    continue
                try:
                    await self._claim(mn)
                except StorageError as exc:
                    self.log.warning("command claim failed", mn=mn, error=str(exc))

    # -- sending --------------------------------------------------------------------------

    async def _claim(self, mn: str) -> None:
        cfg = self.cfg
        now_us = _now_us()
        qn = self._qn.next((now_us + self.utc_offset_us) // 1000)
        claim = await self.store.claim(
            mn,
            worker=self.worker,
            qn=qn,
            now_us=now_us,
            deadline_us=now_us + int(cfg.timeout_s * US),
            ttl_s=cfg.ttl_s,
        )
        if claim is None:
            self._queued_mns.discard(mn)  # the next sweep or notification brings it back
            return
        row = claim.command
        cn = f"{row.cn:04d}"
        over_time = float(claim.over_time_s) if claim.over_time_s else cfg.timeout_s
        retries = claim.re_count if claim.re_count is not None else cfg.retries
        ex = _Exchange(
            id=row.id,
            mn=mn,
            cn=cn,
            qn=row.qn or qn,
            pattern=flows.pattern_for(cn, row.parameters),
            params=row.parameters,
            profile_name=claim.profile,
            registry_pw=claim.password,
            attempts=row.attempts,
            max_attempts=1 + retries,
            over_time_s=over_time,
        )
        self._inflight[mn] = ex
        conn = self.hub.sessions.get(mn)
        if conn is None or conn.closed:
            self._drop(ex)
            self._op("requeue", lambda: self.store.requeue(ex.id))
            return
        data = self._build(ex, conn, now_us)
        if data is None:
            return
        self._write(ex, conn, data)
        self._arm(ex, over_time)
        self.log.info(
            "command sent",
            command_id=ex.id,
            mn=mn,
            cn=cn,
            qn=ex.qn,
            attempt=ex.attempts,
            parameters=sorted(ex.params),
        )

    def _build(self, ex: _Exchange, conn: DeviceConnection, now_us: int) -> bytes | None:
        """The command frame, or None after failing the command (nothing sensible to send).
        Built again for each attempt: a 1012 then carries the time of that attempt."""
        peer = self._peers.get(ex.mn)
        pw = ex.registry_pw
        if pw is None and peer is not None and peer.conn_id == conn.conn_id:
            pw = peer.pw  # not in the registry: the password the device uses right now
        version = peer.version if peer is not None else self.settings.protocol.profile
        if version not in VERSION_BITS:
            version = "2017"
        profile = profile_for_version(version)
        if ex.profile_name:
            with contextlib.suppress(ProtocolError):
                profile = get_profile(ex.profile_name)
        st = peer.st if peer is not None else None
        if not pw:
            self._finish(ex, "failed", now_us, reason="no_password")
            return None
        if not st:
            self._finish(ex, "failed", now_us, reason="unknown_st")
            return None
        params = flows.with_defaults(ex.cn, ex.params, (now_us + self.utc_offset_us) // 1000)
        spec = profile.command_params(ex.cn) or ()
        try:
            return command(
                cn=ex.cn,
                mn=ex.mn,
                pw=pw,
                st=st,
                version=version,
                qn=ex.qn,
                params=flows.ordered(spec, params),
                profile=profile,
            )
        except ProtocolError as exc:
            self._finish(
                ex, "failed", now_us, reason="invalid", answer={"error": exc.detail or str(exc)}
            )
            return None

    def _write(self, ex: _Exchange, conn: DeviceConnection, data: bytes) -> None:
        transport = conn.transport
        if transport is not None and not conn.closed and not transport.is_closing():
            transport.write(data)
            self.metrics.bytes_out.inc(len(data))
            self.metrics.command_frames.labels(self._cn_label(ex.cn)).inc()

    def _arm(self, ex: _Exchange, delay_s: float) -> int:
        if ex.timer is not None:
            ex.timer.cancel()
        ex.timer = self._loop.call_later(delay_s, self._on_timer, ex)
        return _now_us() + int(delay_s * US)

    def _on_timer(self, ex: _Exchange) -> None:
        if self._inflight.get(ex.mn) is not ex:
            return
        ex.timer = None
        now_us = _now_us()
        if ex.state == "sent":
            if ex.attempts >= ex.max_attempts:
                self._finish(ex, "failed", now_us, reason="no_answer")
                return
            conn = self.hub.sessions.get(ex.mn)
            if conn is None or conn.closed:
                # The device went away (or to another worker): back to the queue, so
                # whoever holds it next sends it again.
                self._drop(ex)
                self._op("requeue", lambda: self.store.requeue(ex.id))
                return
            data = self._build(ex, conn, now_us)
            if data is None:
                return
            ex.attempts += 1
            self._write(ex, conn, data)
            deadline = self._arm(ex, ex.over_time_s)
            self._op("resent", lambda: self.store.resent(ex.id, deadline_us=deadline))
            return
        # Acknowledged, and the result did not come in time.
        if ex.pattern == flows.GET and ex.answers:
            self._finish(ex, "done", now_us)  # the answer is the result; 9012 never came
        elif ex.pattern == flows.HISTORY and ex.uploads:
            self._finish(ex, "failed", now_us, reason="incomplete")
        else:
            self._finish(ex, "failed", now_us, reason="no_result")

    def _result_timeout(self, ex: _Exchange) -> float:
        if ex.pattern == flows.HISTORY:
            return self.cfg.history_idle_timeout_s
        if ex.cn in self._long_cns:
            return self.cfg.long_result_timeout_s
        return self.cfg.result_timeout_s

    # -- the hub's hooks (on the packet path: no awaiting, no database) -------------------

    def on_claim(self, mn: str, conn: DeviceConnection, packet: Packet) -> None:
        """A device (MN) now talks over ``conn``: remember how, and send what waits for it."""
        peers = self._peers
        peers.pop(mn, None)  # re-inserted last: the dict's order is least recent first
        peers[mn] = _Peer(conn.conn_id, packet.pw, packet.st, packet.version)
        if len(peers) > TRACKED_MNS_MAX:
            del peers[next(iter(peers))]
        if mn in self._queued_mns and mn not in self._inflight:
            self._want(mn)

    def on_packet(
        self,
        conn: DeviceConnection,
        packet: Packet,
        kind: str,
        wall_us: int,
        *,
        stored: bool,
    ) -> None:
        """An admitted packet: measure the clock, match answers to the command in flight."""
        mn = packet.mn
        cn = packet.cn
        if cn == REALTIME_CN and kind == "upload":
            self._measure(conn, packet, wall_us)
        elif cn == TIME_REQUEST_CN and kind == "notify" and self.cfg.answer_time_requests:
            self._time_request(packet)
        ex = self._inflight.get(mn)
        if ex is not None:
            self._correlate(ex, packet, kind, wall_us, stored=stored)
        elif cn in _ANSWER_CNS:
            self._stray(packet)

    def on_refused(self, conn: DeviceConnection, packet: Packet, wall_us: int) -> None:
        """A packet auth refused. The one case that matters: the answer to a 1072 signed
        with the new password (the registry still holds the old one)."""
        ex = self._inflight.get(packet.mn)
        if (
            ex is not None
            and ex.cn == flows.SET_PASSWORD_CN
            and packet.qn == ex.qn
            and packet.cn in _ANSWER_CNS
            and packet.pw
            and packet.pw == ex.params.get("NewPW")
        ):
            self._correlate(ex, packet, "answer", wall_us, stored=False)

    # -- correlation ----------------------------------------------------------------------

    def _correlate(
        self, ex: _Exchange, packet: Packet, kind: str, wall_us: int, *, stored: bool
    ) -> None:
        cn = packet.cn
        if packet.qn == ex.qn:
            if cn == "9011":
                self._on_qn_rtn(ex, flows.parse_code(packet.cp.get("QnRtn")), wall_us)
            elif cn == "9012":
                self._on_exe_rtn(ex, flows.parse_code(packet.cp.get("ExeRtn")), wall_us)
            elif cn == "9013" and ex.pattern == flows.NOTIFY:
                self._count_answer("matched")
                self._finish(ex, "done", wall_us)
            elif cn == ex.cn and ex.pattern == flows.HISTORY and kind == "upload":
                self._on_history_upload(ex, packet, wall_us, stored=stored)
            elif cn == ex.cn:
                self._on_answer(ex, packet, wall_us)
            return
        if cn == ex.cn and ex.pattern == flows.HISTORY and kind == "upload":
            self._on_history_upload(ex, packet, wall_us, stored=stored)
        elif cn in _ANSWER_CNS:
            self._stray(packet)

    def _implied_ack(self, ex: _Exchange, wall_us: int) -> None:
        """A result or data arrived without a 9011 first: the request was accepted."""
        if ex.state == "sent":
            ex.state = "acknowledged"
            ex.ack_us = wall_us

    def _on_qn_rtn(self, ex: _Exchange, code: int | None, wall_us: int) -> None:
        self._count_answer("matched")
        if ex.state != "sent":
            return  # a second 9011 (the device answered a resend too)
        if code is None:
            code = 100  # unreadable: the standard's "unknown error"
        ex.qn_rtn = code
        if code != 1:
            self._finish(ex, "failed", wall_us, reason=flows.qn_rtn_reason(code))
            return
        ex.state = "acknowledged"
        ex.ack_us = wall_us
        deadline = self._arm(ex, self._result_timeout(ex))
        self._op(
            "acknowledge",
            lambda: self.store.acknowledge(ex.id, qn_rtn=1, now_us=wall_us, deadline_us=deadline),
        )

    def _on_exe_rtn(self, ex: _Exchange, code: int | None, wall_us: int) -> None:
        self._count_answer("matched")
        self._implied_ack(ex, wall_us)
        if code is None:
            self._finish(ex, "failed", wall_us, reason="bad_answer")
            return
        state, reason = flows.exe_rtn_outcome(ex.pattern, code)
        self._finish(ex, state, wall_us, exe_rtn=code, reason=reason)

    def _on_answer(self, ex: _Exchange, packet: Packet, wall_us: int) -> None:
        self._count_answer("matched")
        self._implied_ack(ex, wall_us)
        if len(ex.answers) < self.cfg.answer_packets_max:
            ex.answers.append(
                {
                    "cn": packet.cn,
                    "cp": _bounded(packet.cp),
                    "data": _bounded(packet.data),
                }
            )
        # The 9012 follows at once; without one, the answer alone completes the read.
        self._arm(ex, ex.over_time_s)

    def _on_history_upload(
        self, ex: _Exchange, packet: Packet, wall_us: int, *, stored: bool
    ) -> None:
        if not stored:
            return  # not queued for the database: no 9014 went out, the device resends
        if not _in_requested_window(ex.params, packet):
            return  # the device's own schedule (history uploads carry fresh QNs)
        self._implied_ack(ex, wall_us)
        ex.uploads += 1
        for record in packet.records:
            ex.records += 1
            t = record.data_time
            if t is not None:
                if ex.first_data_time is None or t < ex.first_data_time:
                    ex.first_data_time = t
                if ex.last_data_time is None or t > ex.last_data_time:
                    ex.last_data_time = t
        # Each upload buys another idle period, but never past the long result timeout
        # from the acknowledgement: a fetch that keeps trickling ends some time.
        assert ex.ack_us is not None
        left_s = (ex.ack_us - wall_us) / US + self.cfg.long_result_timeout_s
        deadline = self._arm(ex, max(0.0, min(self.cfg.history_idle_timeout_s, left_s)))
        answer = ex.answer()
        self._op(
            "progress",
            lambda: self.store.progress(ex.id, deadline_us=deadline, answer=answer),
            droppable=True,
        )

    def _stray(self, packet: Packet) -> None:
        """An answer that matches nothing in flight: late (its command ended) or unknown."""
        late = packet.qn is not None and (packet.mn, packet.qn) in self._finished
        self._count_answer("late" if late else "unmatched")
        if late:
            self.log.info(
                "late command answer",
                mn=packet.mn,
                cn=packet.cn,
                qn=packet.qn,
                command_id=self._finished[(packet.mn, packet.qn or "")],
            )

    def _count_answer(self, result: str) -> None:
        self.metrics.command_answers.labels(result).inc()

    # -- ending ---------------------------------------------------------------------------

    def _drop(self, ex: _Exchange) -> None:
        if ex.timer is not None:
            ex.timer.cancel()
            ex.timer = None
        if self._inflight.get(ex.mn) is ex:
            del self._inflight[ex.mn]

    def _finish(
        self,
        ex: _Exchange,
        state: str,
        now_us: int,
        *,
        exe_rtn: int | None = None,
        reason: str | None = None,
        answer: Any = None,
    ) -> None:
        self._drop(ex)
        self._finished[(ex.mn, ex.qn)] = ex.id
        while len(self._finished) > RECENT_FINISHED:
            self._finished.popitem(last=False)
        self.metrics.commands.labels(self._cn_label(ex.cn), state).inc()
        final_answer = answer if answer is not None else ex.answer()
        self.log.info(
            "command finished",
            command_id=ex.id,
            mn=ex.mn,
            cn=ex.cn,
            state=state,
            reason=reason,
            qn_rtn=ex.qn_rtn,
            exe_rtn=exe_rtn,
            attempts=ex.attempts,
        )
        self._op(
            "finish",
            lambda: self.store.finish(
                ex.id,
                state=state,
                now_us=now_us,
                qn_rtn=ex.qn_rtn,
                exe_rtn=exe_rtn,
                acknowledged_us=ex.ack_us,
                answer=final_answer,
                reason=reason,
            ),
            wake=ex.mn,
        )
        if state == "done" and ex.cn == flows.SET_PASSWORD_CN:
            self._password_changed(ex.mn, ex.params.get("NewPW", ""))

    def _password_changed(self, mn: str, password: str) -> None:
        """A 1072 succeeded: the registry (and this worker's copy) learn the new password."""
        if not password:
            return
        registry = self.hub.registry
        device = registry.get(mn)
        if device is not None:
            registry.devices[mn] = device._replace(password=password)
        peer = self._peers.get(mn)
        if peer is not None:
            peer.pw = password
        if device is not None or registry.policy == "open":
            self._op("set_password", lambda: self.store.set_password(mn, password))

    # -- the database queue ---------------------------------------------------------------

    def _op(
        self,
        what: str,
        fn: Callable[[], Awaitable[Any]],
        *,
        wake: str | None = None,
        droppable: bool = False,
    ) -> None:
        if droppable and self._ops.qsize() >= OPS_MAX // 2:
            return
        try:
            self._ops.put_nowait((what, fn, wake))
        except asyncio.QueueFull:
            self.log.error("command database queue full; update dropped", op=what)

    async def _op_loop(self) -> None:
        while True:
            what, fn, wake = await self._ops.get()
            try:
                pause = OP_RETRY_S
                for attempt in range(1, OP_TRIES + 1):
                    try:
                        await fn()
                        break
                    except StorageError as exc:
                        if not exc.retriable or attempt == OP_TRIES:
                            self.log.error("command update failed", op=what, error=str(exc))
                            break
                        await asyncio.sleep(pause)
                        pause *= 2
                    except Exception as exc:
                        self.log.error("command update failed", op=what, error=repr(exc))
                        break
                if wake is not None:
                    self._want(wake)
            finally:
                self._ops.task_done()

    # -- clock skew -----------------------------------------------------------------------

    def _measure(self, conn: DeviceConnection, packet: Packet, wall_us: int) -> None:
        if packet.header.get("RF") == "1":
            return  # a 2025 intentional re-send (field-quirks Q19)
        records = packet.records
        local = records[0].data_time_us if records else None
        if local is None:
            return
        offset = self.utc_offset_us
        sent_us = _qn_us(packet.qn)
        if sent_us is not None:
            sent_us -= offset
        obs = self._skew.observe(packet.mn, sent_us, local - offset, wall_us)
        if obs is None:
            return
        self._skews[packet.mn] = (obs.skew_s, wall_us, conn.peer, packet.version)
        if obs.fire and self.cfg.clock_skew_fix:
            self._op("auto_clock_fix", lambda: self._auto_clock_fix(packet.mn, obs.skew_s))

    async def _auto_clock_fix(self, mn: str, skew_s: float) -> None:
        try:
            outcome = await self.store.auto_clock_fix(
                mn,
                {},
                now_us=_now_us(),
                period_s=self.cfg.clock_skew_period_s,
                tries=self.cfg.clock_skew_tries,
            )
        except StorageError:
            self.metrics.clock_fixes.labels("error").inc()
            raise
        self.metrics.clock_fixes.labels(outcome).inc()
        self.log.info("clock skew", mn=mn, skew_s=round(skew_s, 3), action=outcome)
        if outcome == "queued":
            self._queued_mns.add(mn)
            self._want(mn)

    def _time_request(self, packet: Packet) -> None:
        params = {"PolId": packet.cp["PolId"]} if packet.cp.get("PolId") else {}
        mn = packet.mn

        async def queue() -> None:
            if await self.store.time_request(mn, params):
                self._queued_mns.add(mn)
                self._want(mn)

        self._op("time_request", queue)

    async def _flush_skews(self) -> None:
        """Each device's latest skew: into presence, and once into the histogram (so the
        histogram describes devices, not how often they upload)."""
        latest, self._skews = self._skews, {}
        if not latest:
            return
        histogram = self.metrics.clock_skew
        rows = []
        for mn, (skew_s, at_us, peer, version) in latest.items():
            histogram.observe(skew_s)
            rows.append(ClockSkewRow(mn, skew_s, at_us, peer, self.worker, version))
        await self.store.write_clock_skew(rows)

    def _cn_label(self, cn: int | str) -> str:
        return self.metrics.cn_label(cn if isinstance(cn, str) else f"{cn:04d}")


def _in_requested_window(params: dict[str, Any], packet: Packet) -> bool:
    """An upload answers a history request when one of its records' DataTime lies in the
    request's BeginTime..EndTime (inclusive slot starts, protocol.md 7); a request without
    both counts every upload of its CN."""
    begin = str(params.get("BeginTime") or "")[:14]
    end = str(params.get("EndTime") or "")[:14]
    if not (begin and end):
        return True
    return any(r.data_time is not None and begin <= r.data_time[:14] <= end for r in packet.records)


def _now_us() -> int:
    return time.time_ns() // 1000


def _qn_us(qn: str | None) -> int | None:
    """A QN as microseconds (device wall clock read as UTC), or None. The seconds part goes
    through the shared time cache (shared by every device sending in that second); the
    milliseconds are added apart, so unique QNs do not churn the cache."""
    if qn is None or len(qn) != 17 or not qn.isdigit():
        return None
    try:
        return parse_time_us(qn[:14]) + int(qn[14:]) * 1000
    except ProtocolError:
        return None
