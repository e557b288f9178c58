"""Simulated units on real TCP connections, many per process, cheaply.

Each unit is a ``_Device`` (state, outbox, timers) with one ``asyncio.Protocol``
connection at a time; no task runs per device. Its schedule is one ``call_at`` timer
that fires when the next frame is due, its reply wait one ``call_later`` timer. That
keeps 12,000 units in one process at a few kilobytes each.

A unit behaves like a DAU: frames leave in order; a frame asking for a reply (Flag A=1)
blocks the ones behind it until the 9014/9013 with its QN arrives, or until OverTime,
after which it is resent, up to ReCount times, then abandoned (protocol.md 6.6). Frames
not asking for a reply are sent and forgotten. A connection lost while waiting keeps
the frame, which is resent on the next connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import socket
import struct
import termios
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, cast

from gateway.sim.content import JUNK, OutFrame, build_frames, qn_text
from gateway.sim.fleet import DeviceSpec, FleetConfig, source_ip
from gateway.sim.schedule import Event, due, history, next_due, streams
from gateway.sim.stats import SimStats
from protocol import Frame, FrameBuffer

MODES: Final = ("steady", "reconnect-storm", "backfill-storm")
STORM_STYLES: Final = ("reset", "silent")
"""How a unit loses its connection in a reconnect storm: ``reset`` (the gateway sees a
TCP reset at once) or ``silent`` (a dead modem: the old connection stays open and quiet
until the gateway closes it when the unit's MN arrives on the new one, field-quirks Q21;
this holds two sockets per unit for a while)."""

CONNECT_TIMEOUT_S: Final = 10.0
"""A connect that takes longer is abandoned and retried: a SYN lost to a full accept
queue is retransmitted after 1 s and 3 s, so 10 s covers two retransmissions."""
RECONNECT_BACKOFF_S: Final = (0.5, 1.0, 2.0, 4.0, 8.0)
"""Waits before successive reconnect attempts after a failure (then the last repeats)."""
OUTBOX_MAX: Final = 10_000
"""Frames a unit holds while it cannot send (real DAUs keep weeks; no run here produces
more than a few hundred per unit), so a dead gateway cannot exhaust memory."""
SPLIT_WRITE_DELAY_S: Final = 0.02
"""Pause between the pieces of a frame sent in several writes (Q7): long enough that
the gateway reads the pieces separately, short against any reply timeout."""
STORM_FLUSH_S: Final = 2.0
"""Reconnect storm: a unit drops its connection once the bytes it wrote have reached
the gateway's socket, waiting at most this long (see ``_Conn.unsent_bytes``)."""
POLL_S: Final = 0.1
"""How often the run checks whether a phase is over."""
CONNECTS_IN_FLIGHT: Final = 2_048
"""Connection attempts in flight per run at once: half the gateway's listen backlog
(4,096), so a whole fleet connecting does not overflow the accept queue and wait out
SYN retransmissions."""

# Reconnect-storm progress of one unit: dropped, connected again, first frame done.
_STORM_NONE: Final = 0
_STORM_DROPPED: Final = 1
_STORM_BACK: Final = 2

_LINGER_0: Final = struct.pack("ii", 1, 0)
_INT_0: Final = struct.pack("i", 0)
# Linux value of IP_BIND_ADDRESS_NO_PORT (include/uapi/linux/in.h); Python 3.11 lacks it.
_IP_BIND_ADDRESS_NO_PORT: Final = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


@dataclass(frozen=True, slots=True)
class RunConfig:
    """One simulation run (all processes share it)."""

    host: str
    port: int
    fleet: FleetConfig
    sim_start: int
    """Simulated local time (seconds since 1970, wall clock) at which the schedule starts."""
    mode: str = "steady"
    duration_s: float = 60.0
    """Real seconds of the load phase (then a drain of at most ``drain_s``)."""
    speed: float = 1.0
    history_hours: int = 24
    over_time_s: float = 10.0
    re_count: int = 3
    storm_after_s: float | None = None
    """Reconnect storm: real seconds after the start (default: a third of the duration)."""
    storm_style: str = "reset"
    connects_in_flight: int = CONNECTS_IN_FLIGHT
    drain_s: float | None = None
    """Real seconds to let queues empty and replies arrive after the load phase
    (default: OverTime x (ReCount + 1) + 5 s, the longest a last frame can need)."""
    settle_s: float = 10.0
    """At most this long before closing for every byte written to reach the gateway's
    socket: a reset (SO_LINGER 0) discards bytes the peer has not acknowledged, and a
    gateway that paused reading under backpressure acknowledges nothing until it resumes."""
    idle_hold_s: float = 0.0
    """Seconds every unit stays connected and silent before the schedule starts: lets a
    benchmark measure what idle connections cost the gateway."""
    spread_sources: bool = True
    """Bind each unit to its own 127.x.y.z source address (only for loopback targets)."""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def sim_end(self) -> int:
        return self.sim_start + int(self.duration_s * self.speed)

    @property
    def drain_deadline_s(self) -> float:
        if self.drain_s is not None:
            return self.drain_s
        return self.over_time_s * (self.re_count + 1) + 5.0


def _is_loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.")


def _reply_key(segment: bytes) -> tuple[bytes, bytes]:
    """(QN, CN) of a reply's data segment, without a full decode."""
    qn = cn = b""
    for part in segment.split(b";", 6):
        if part.startswith(b"QN="):
            qn = part[3:]
        elif part.startswith(b"CN="):
            cn = part[3:]
            break
    return qn, cn


class _Conn(asyncio.Protocol):
    """One TCP connection of one unit."""

    __slots__ = ("delayed", "dev", "framer", "intentional", "orphan", "paused", "transport")

    def __init__(self, dev: _Device) -> None:
        self.dev = dev
        self.transport: asyncio.Transport | None = None
        self.framer = FrameBuffer(lenient=True)
        self.paused = False
        self.intentional = False
        self.orphan = False
        self.delayed: list[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport but provide its methods.
        self.transport = cast("asyncio.Transport", transport)
        self.dev.on_connected(self)

    def data_received(self, data: bytes) -> None:
        self.dev.on_data(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.orphan:
            self.orphan = False
            self.dev.run.orphan_closed(self)
        self.dev.on_lost(self, exc)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.dev.pump()

    def unsent_bytes(self) -> int:
        """Bytes written but not yet acknowledged by the gateway's kernel: in the
        transport's buffer, held for a split write, or in the socket's send queue
        (SIOCOUTQ, Linux; elsewhere only the first two are known)."""
        t = self.transport
        if t is None or t.is_closing():
            return 0
        n = t.get_write_buffer_size() + sum(len(d) for d in self.delayed or ())
        sock = t.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, ValueError):
                n += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, _INT_0))[0]
        return n

    def write(self, data: bytes, split: bool, loop: asyncio.AbstractEventLoop) -> None:
        """Write bytes in order; ``split`` sends the frame in two pieces (Q7)."""
        t = self.transport
        if t is None or t.is_closing():
            return
        if self.delayed is not None:
            self.delayed.append(data)
            return
        if split and len(data) > 8:
            cut = len(data) // 2
            t.write(data[:cut])
            self.delayed = [data[cut:]]
            loop.call_later(SPLIT_WRITE_DELAY_S, self._flush_delayed)
        else:
            t.write(data)

    def _flush_delayed(self) -> None:
        pending, self.delayed = self.delayed, None
        t = self.transport
        if pending and t is not None and not t.is_closing():
            t.write(b"".join(pending))

    def close(self) -> None:
        self.intentional = True
        if self.transport is not None:
            self._flush_delayed()
            self.transport.close()  # SO_LINGER 0: a reset once the buffer is written


class _Device:
    """One simulated unit's state."""

    __slots__ = (
        "ack_timer",
        "conn",
        "connecting",
        "cursor",
        "due_at",
        "failures",
        "generation",
        "history_left",
        "holding",
        "last_qn_ms",
        "outbox",
        "run",
        "sent_keys",
        "spec",
        "storm_state",
        "streams",
        "tick",
        "tries",
        "waiting",
    )

    def __init__(self, run: SliceRun, spec: DeviceSpec) -> None:
        self.run = run
        self.spec = spec
        self.streams = streams(spec)
        self.conn: _Conn | None = None
        self.connecting = False
        self.outbox: collections.deque[Event | OutFrame] = collections.deque()
        self.waiting: OutFrame | None = None
        self.tries = 0
        self.ack_timer: asyncio.TimerHandle | None = None
        self.tick: asyncio.TimerHandle | None = None
        self.cursor = run.cfg.sim_start
        self.due_at = run.cfg.sim_start
        self.sent_keys: set[tuple[int, int, int]] = set()
        self.last_qn_ms = 0
        self.generation = 0
        self.failures = 0
        self.history_left = 0
        self.holding = False
        self.storm_state = _STORM_NONE

    @property
    def idle(self) -> bool:
        return self.waiting is None and not self.outbox

    # -- connection ----------------------------------------------------------------------

    async def connect(self) -> None:
        run = self.run
        if self.connecting or self.conn is not None or run.closing:
            return
        self.connecting = True
        try:
            async with run.connect_slots:
                if not run.stopped():  # the run may have ended while this waited
                    await self._connect_once()
        finally:
            self.connecting = False

    async def _connect_once(self) -> None:
        run = self.run
        loop = run.loop
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Reset on close: no TIME_WAIT left behind by tens of thousands of sockets.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
            if run.spread:
                # Pick the port at connect time, per destination (performance.md 1).
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((source_ip(self.spec.index, self.generation), 0))
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await loop.sock_connect(sock, run.addr)
            conn = _Conn(self)
            await loop.create_connection(lambda: conn, sock=sock)
        except (OSError, TimeoutError) as exc:
            sock.close()
            run.stats.connect_errors += 1
            run.stats.error(f"connect {self.spec.mn}: {type(exc).__name__}: {exc}")
            self._retry_connect()

    def _retry_connect(self) -> None:
        run = self.run
        if run.closing:
            return
        delay = RECONNECT_BACKOFF_S[min(self.failures, len(RECONNECT_BACKOFF_S) - 1)]
        self.failures += 1
        run.loop.call_later(delay, run.spawn_connect, self)

    def on_connected(self, conn: _Conn) -> None:
        run = self.run
        self.conn = conn
        self.failures = 0
        run.stats.connects += 1
        run.connected += 1
        run.stats.connected_peak = max(run.stats.connected_peak, run.connected)
        if self.storm_state == _STORM_DROPPED and run.storm_t0 is not None:
            self.storm_state = _STORM_BACK
            run.storm_back(time.monotonic() - run.storm_t0)
        if self.spec.quirk == "junk_prefix":
            conn.write(JUNK, False, run.loop)
        self.pump()

    def _detach(self, conn: _Conn) -> None:
        if conn is not self.conn:
            return
        self.conn = None
        self.run.connected -= 1
        if self.ack_timer is not None:
            self.ack_timer.cancel()
            self.ack_timer = None
        if self.waiting is not None:
            self.outbox.appendleft(self.waiting)  # resent on the next connection
            self.waiting = None

    def on_lost(self, conn: _Conn, exc: Exception | None) -> None:
        if conn is not self.conn:
            return
        self._detach(conn)
        run = self.run
        if conn.intentional or run.closing:
            return
        run.stats.disconnects += 1
        run.stats.error(f"connection of {self.spec.mn} lost: {exc!r}")
        self._retry_connect()

    def flushed(self) -> bool:
        return self.conn is None or self.conn.unsent_bytes() == 0

    def drop(self) -> None:
        """Reconnect storm: lose the connection now (a reset), then dial again."""
        conn = self.conn
        self.holding = False
        self.generation += 1
        self.storm_state = _STORM_DROPPED
        if conn is not None:
            conn.intentional = True
            self._detach(conn)
            if self.run.cfg.storm_style == "silent":
                conn.orphan = True  # left open and silent, like a dead modem's
                self.run.orphans.add(conn)
            elif conn.transport is not None:
                conn.transport.abort()

    def close(self) -> None:
        conn = self.conn
        if conn is not None:
            conn.close()
            self._detach(conn)

    # -- replies -------------------------------------------------------------------------

    def on_data(self, conn: _Conn, data: bytes) -> None:
        stats = self.run.stats
        for item in conn.framer.feed(data):
            if type(item) is not Frame:
                stats.bad_replies += 1
                continue
            stats.replies_received += 1
            qn, cn = _reply_key(item.segment)
            w = self.waiting
            if (
                w is not None
                and conn is self.conn
                and w.qn is not None
                and qn == w.qn.encode()
                and cn in (b"9014", b"9013")
            ):
                self._replied(w)
            else:
                stats.unmatched_replies += 1

    def _replied(self, w: OutFrame) -> None:
        run = self.run
        now = time.monotonic()
        run.stats.replied += 1
        run.stats.add_latency(now - w.sent_at)
        if self.ack_timer is not None:
            self.ack_timer.cancel()
            self.ack_timer = None
        self.waiting = None
        self._finished(w)
        self.pump()

    def _on_ack_timeout(self) -> None:
        self.ack_timer = None
        w = self.waiting
        conn = self.conn
        if w is None or conn is None:
            return
        run = self.run
        run.stats.timeouts += 1
        if self.tries < run.cfg.re_count:
            self.tries += 1
            self._send(w)
            self.ack_timer = run.loop.call_later(run.cfg.over_time_s, self._on_ack_timeout)
            return
        run.stats.gave_up += 1
        run.stats.error(f"{self.spec.mn}: no reply to QN {w.qn} after {self.tries} resends")
        self.waiting = None
        self._finished(w, delivered=False)
        self.pump()

    def _finished(self, f: OutFrame, *, delivered: bool = True) -> None:
        """``f`` needs nothing more: replied, sent without asking a reply, or (not
        ``delivered``) abandoned."""
        if self.storm_state == _STORM_BACK and delivered:
            run = self.run
            self.storm_state = _STORM_NONE
            if run.storm_t0 is not None:
                run.storm_storing(time.monotonic() - run.storm_t0)
        if f.history:
            self.history_left -= 1
            if self.history_left == 0:
                self.run.backfill_done(self)

    # -- sending -------------------------------------------------------------------------

    def _next_qn(self) -> str:
        ms = max(int(self.run.sim_now() * 1000), self.last_qn_ms + 1)
        self.last_qn_ms = ms
        return qn_text(ms)

    def enqueue(self, items: list[Event]) -> None:
        out = self.outbox
        stats = self.run.stats
        for item in items:
            if len(out) >= OUTBOX_MAX:
                out.popleft()
                stats.outbox_dropped += 1
            out.append(item)

    def pump(self) -> None:
        """Send what can be sent now: everything up to the next frame that waits."""
        run = self.run
        out = self.outbox
        while self.waiting is None and out:
            conn = self.conn
            if conn is None or conn.paused or self.holding:
                return
            item = out.popleft()
            if type(item) is Event:
                frames = build_frames(
                    self.spec,
                    run.cfg.fleet.seed,
                    item.cn,
                    item.data_time,
                    self._next_qn,
                    history=item.history,
                )
                if item.history:
                    self.history_left += len(frames) - 1
                    run.stats.backfill_frames += len(frames)
                out.extendleft(reversed(frames[1:]))
                f = frames[0]
            else:
                assert isinstance(item, OutFrame)
                f = item
            self._send(f)
            if f.ack:
                self.waiting = f
                self.tries = 0
                self.ack_timer = run.loop.call_later(run.cfg.over_time_s, self._on_ack_timeout)
            else:
                self._finished(f)
        if self.waiting is None and not out and not run.loading:
            run.wake()  # draining: this unit is done

    def _send(self, f: OutFrame) -> None:
        run = self.run
        stats = run.stats
        conn = self.conn
        assert conn is not None
        if f.transmitted:
            stats.resends += 1
        else:
            f.transmitted = True
            stats.frames_sent += 1
            stats.bytes_sent += len(f.data)
            stats.frames_by_cn[f.cn] = stats.frames_by_cn.get(f.cn, 0) + 1
            if f.ack:
                stats.expected_replies += 1
            if (f.readings or f.infos) and f.key not in self.sent_keys:
                self.sent_keys.add(f.key)
                stats.rows_reading += f.readings
                stats.rows_info += f.infos
        f.sent_at = time.monotonic()
        conn.write(f.data, self.spec.quirk == "split_writes", run.loop)

    # -- schedule ------------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.run.cfg
        if cfg.mode == "backfill-storm":
            slots = history(cfg.sim_start, cfg.history_hours)
            self.history_left = len(slots)
            self.enqueue(slots)
        self._schedule()
        self.pump()

    def _schedule(self) -> None:
        run = self.run
        nxt = next_due(self.streams, self.cursor)
        if nxt < run.cfg.sim_end:
            self.due_at = nxt
            self.tick = run.loop.call_at(run.real_at(nxt), self._on_tick)
        else:
            self.tick = None

    def _on_tick(self) -> None:
        run = self.run
        if not run.loading:
            self.tick = None
            return
        upto = min(max(int(run.sim_now()), self.due_at) + 1, run.cfg.sim_end)
        if upto > self.cursor:
            self.enqueue(due(self.streams, self.cursor, upto))
            self.cursor = upto
        self._schedule()
        self.pump()

    def stop_schedule(self) -> None:
        if self.tick is not None:
            self.tick.cancel()
            self.tick = None

    def unsent(self) -> int:
        return len(self.outbox) + (1 if self.waiting is not None else 0)


class SliceRun:
    """The devices of one process and the phases of a run: connect, load, drain, close."""

    def __init__(self, cfg: RunConfig, specs: list[DeviceSpec]) -> None:
        self.cfg = cfg
        self.stats = SimStats(devices=len(specs))
        self.specs = specs
        self.addr = (cfg.host, cfg.port)
        self.spread = cfg.spread_sources and _is_loopback(cfg.host)
        self.loop: asyncio.AbstractEventLoop
        self.connect_slots = asyncio.Semaphore(max(1, cfg.connects_in_flight))
        self.devices: list[_Device] = []
        self.connected = 0
        self.loading = False
        self.closing = False
        self.real0 = 0.0
        self.mono0 = 0.0
        self.storm_t0: float | None = None
        self.backfill_left = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self.orphans: set[_Conn] = set()

    # clock ----------------------------------------------------------------------------

    def sim_now(self) -> float:
        return self.cfg.sim_start + (self.loop.time() - self.real0) * self.cfg.speed

    def real_at(self, sim_t: int) -> float:
        return self.real0 + (sim_t - self.cfg.sim_start) / self.cfg.speed

    # bookkeeping ------------------------------------------------------------------------

    def spawn_connect(self, dev: _Device) -> None:
        if self.closing:
            return
        task = self.loop.create_task(dev.connect())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def orphan_closed(self, conn: _Conn) -> None:
        """The gateway closed a connection a silent storm left behind."""
        if conn in self.orphans:
            self.orphans.discard(conn)
            if not self.closing:
                self.stats.storm_orphans_closed += 1

    def storm_back(self, seconds: float) -> None:
        s = self.stats
        s.storm_reconnected += 1
        s.storm_reconnected_s = max(s.storm_reconnected_s or 0.0, seconds)

    def storm_storing(self, seconds: float) -> None:
        s = self.stats
        s.storm_storing += 1
        s.storm_storing_s = max(s.storm_storing_s or 0.0, seconds)

    def backfill_done(self, dev: _Device) -> None:
        s = self.stats
        s.backfill_devices_done += 1
        s.backfill_done_s = max(s.backfill_done_s or 0.0, time.monotonic() - self.mono0)
        self.backfill_left -= 1
        if self.backfill_left <= 0:
            self.wake()

    def _storm(self) -> None:
        if self.loading:
            task = self.loop.create_task(self._storm_now())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _storm_now(self) -> None:
        """Every unit stops writing, waits until what it wrote has reached the gateway
        (so the reset loses nothing the accounting counts as sent), drops, redials."""
        for dev in self.devices:
            dev.holding = True
        end = self.loop.time() + STORM_FLUSH_S
        await self._wait(end, lambda: all(d.flushed() for d in self.devices))
        self.storm_t0 = time.monotonic()
        self.stats.storm_devices = len(self.devices)
        for dev in self.devices:
            dev.drop()
        for dev in self.devices:
            self.spawn_connect(dev)

    # phases -----------------------------------------------------------------------------

    async def run(self, barrier: Callable[[], Awaitable[None]] | None = None) -> SimStats:
        """Run every phase; ``barrier`` is awaited between connecting and loading, so the
        processes of one run start their schedules together."""
        self.loop = asyncio.get_running_loop()
        stats = self.stats
        self.devices = [_Device(self, spec) for spec in self.specs]
        cpu0 = time.process_time()
        try:
            t0 = time.monotonic()
            await asyncio.gather(*(dev.connect() for dev in self.devices))
            stats.connect_s = time.monotonic() - t0
            if barrier is not None:
                await barrier()
            if self.cfg.idle_hold_s > 0:
                await asyncio.sleep(self.cfg.idle_hold_s)
            await self._load()
            await self._drain()
        finally:
            self.closing = True
            self.loading = False
            await self._close()
            stats.cpu_s = time.process_time() - cpu0
        return stats

    async def _load(self) -> None:
        cfg = self.cfg
        self.loading = True
        self.real0 = self.loop.time()
        self.mono0 = time.monotonic()
        if cfg.mode == "backfill-storm" and cfg.history_hours > 0:
            self.backfill_left = len(self.devices)
        storm = None
        if cfg.mode == "reconnect-storm":
            after = cfg.storm_after_s if cfg.storm_after_s is not None else cfg.duration_s / 3
            storm = self.loop.call_at(self.real0 + after, self._storm)
        for dev in self.devices:
            dev.start()
        backfill = cfg.mode == "backfill-storm"
        # A backfill storm is over once every history is in; otherwise run the duration.
        await self._wait(self.real0 + cfg.duration_s, lambda: backfill and self.backfill_left <= 0)
        self.loading = False
        if storm is not None:
            storm.cancel()
        for dev in self.devices:
            dev.stop_schedule()
        self.stats.load_s = time.monotonic() - self.mono0

    async def _drain(self) -> None:
        t0 = time.monotonic()
        end = self.loop.time() + self.cfg.drain_deadline_s
        await self._wait(end, lambda: all(d.idle for d in self.devices))
        self.stats.drain_s = time.monotonic() - t0
        end = self.loop.time() + self.cfg.settle_s
        await self._wait(end, lambda: all(d.flushed() for d in self.devices))
        self.stats.undelivered = sum(1 for d in self.devices if not d.flushed())

    def stopped(self) -> bool:
        return self.closing

    def wake(self) -> None:
        """Something a phase may wait for happened (a unit went idle, a backfill ended)."""
        self._changed.set()

    async def _wait(self, end: float, done: Callable[[], bool]) -> None:
        """Until ``done()`` or the loop time ``end``, checking on every wake-up and at
        least every ``POLL_S``."""
        while not done():
            left = end - self.loop.time()
            if left <= 0:
                return
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(POLL_S, left)):
                    await self._changed.wait()

    async def _close(self) -> None:
        stats = self.stats
        stats.connected_at_end = self.connected
        stats.unsent = sum(d.unsent() for d in self.devices)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        stats.storm_orphans_left = len(self.orphans)
        for conn in list(self.orphans):
            conn.close()
        for dev in self.devices:
            dev.stop_schedule()
            if dev.ack_timer is not None:
                dev.ack_timer.cancel()
                dev.ack_timer = None
            dev.close()
        # Let the transports run connection_lost and release their sockets.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
