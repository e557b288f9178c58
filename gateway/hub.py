"""The per-worker hub: what every connection shares.

It owns the MN-to-connection map, flow control, the presence aggregate and the path of a
frame from the framer to the write queue and back to a reply:

    frame -> decode -> kind (upload / notify / answer / platform_only)
          -> storage rows (Entry) -> BatchWriter.offer(entry, on_durable=reply)

The reply rule (design.md section 2): with ``ack.policy = "durable"`` the reply is the
entry's ``on_durable`` callback, so it is written only after the rows are committed. An
offer the queue refuses gets no reply, and the device resends.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from config import Settings
from gateway.connection import DeviceConnection
from gateway.metrics import Metrics
from gateway.registry import REFUSED, DeviceRegistry, Verdict
from protocol import (
    CrcVariant,
    Frame,
    FrameBuffer,
    Packet,
    ProtocolError,
    Rejected,
    RejectReason,
    decode,
    get_profile,
    packet_kind,
    profile_for_version,
    reframe,
    reply_for,
)
from storage import (
    BatchWriter,
    Entry,
    ForwardTo,
    FrameRow,
    PresenceRow,
    Store,
    entry_for_packet,
)

if TYPE_CHECKING:
    from gateway.commands import CommandDispatcher

# How often the sweep looks for idle connections and stale partial frames. Checking
# 19,000 connections costs a few milliseconds, so once a second is cheap and keeps the
# timeouts accurate to a second.
SWEEP_INTERVAL_S = 1.0
# Connections resumed per loop iteration after backpressure ends, so thousands of
# sockets do not all wake in the same tick (style.md 3.4).
RESUME_SLICE = 500
# MNs listed in one connection-close log line; a relay may carry hundreds.
LOG_MNS = 5


@dataclass(slots=True)
class _Presence:
    first_seen_us: int
    last_seen_us: int
    last_data_time_us: int | None
    peer: str
    version: str
    frames: int
    rejects: int


class Hub:
    """Shared state of one worker process."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        writer: BatchWriter,
        log: Any,
        *,
        worker: int = 0,
        utc_offset_us: int,
        registry: DeviceRegistry | None = None,
        store: Store | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry or DeviceRegistry(settings.auth.policy)
        self.store = store
        self.commands: CommandDispatcher | None = None
        """Platform-to-device commands (set by the app): told of claims and packets."""
        self.forward: Callable[[Packet, str], ForwardTo | None] | None = None
        """Upstreams an accepted frame is forwarded to (set by the app: forward.Selector)."""
        self._background: set[asyncio.Task[None]] = set()
        self.metrics = metrics
        self.writer = writer
        self.log = log
        self.worker = worker
        self.utc_offset_us = utc_offset_us
        self.loop = asyncio.get_running_loop()
        self.connections: set[DeviceConnection] = set()
        self.sessions: dict[str, DeviceConnection] = {}
        self.per_ip: dict[str, int] = {}
        self.paused = False
        self.draining = False
        self.presence: dict[str, _Presence] = {}
        self._ids = itertools.count(1)
        proto = settings.protocol
        self._framer_kwargs = {
            "max_frame_bytes": proto.max_frame_bytes,
            "max_buffer_bytes": settings.listen.max_buffer_bytes,
            "lenient": proto.lenient,
            "accept_variants": frozenset(CrcVariant(v) for v in proto.crc_variants),
        }
        self._durable_ack = settings.ack.policy == "durable"
        self._reply_without_qn = proto.reply_without_qn
        self._archive_rate = settings.storage.archive_rejected_per_minute / 60.0
        self._archive_burst = float(max(1, settings.storage.archive_rejected_per_minute))
        self.frame_rate = settings.listen.max_frames_per_s
        self.frame_burst = float(settings.listen.frame_burst)
        self._write_limit = settings.listen.max_write_buffer_bytes

    # -- connections --------------------------------------------------------------------

    def new_framer(self) -> FrameBuffer:
        return FrameBuffer(**self._framer_kwargs)  # type: ignore[arg-type]

    def make_connection(self) -> DeviceConnection:
        return DeviceConnection(self, next(self._ids))

    def on_open(self, conn: DeviceConnection) -> None:
        listen = self.settings.listen
        if self.draining:
            self._refuse(conn, "shutdown")
            return
        if len(self.connections) >= listen.max_connections:
            self._refuse(conn, "max_connections")
            return
        if listen.max_connections_per_ip and self.per_ip.get(conn.ip, 0) >= (
            listen.max_connections_per_ip
        ):
            self._refuse(conn, "max_connections_per_ip")
            return
        self.connections.add(conn)
        self.per_ip[conn.ip] = self.per_ip.get(conn.ip, 0) + 1
        conn.archive_tokens = self._archive_burst
        conn.archive_refill_at = conn.opened_at
        conn.tokens = self.frame_burst
        conn.tokens_at = conn.opened_at
        if conn.transport is not None:
            # pause_writing (-> closed as write_stalled) fires above this much unread output.
            conn.transport.set_write_buffer_limits(high=self._write_limit)
        self.metrics.connections_accepted.inc()
        self.metrics.connections_open.inc()
        if self.paused:
            conn.pause()

    def _refuse(self, conn: DeviceConnection, reason: str) -> None:
        self.metrics.connections_refused.labels(reason).inc()
        conn.closed = True
        conn.close_reason = "refused"
        if conn.transport is not None:
            conn.transport.abort()

    def on_close(self, conn: DeviceConnection) -> None:
        if conn not in self.connections:
            return  # refused at accept time: never counted as open
        self.connections.discard(conn)
        for rejected in conn.framer.close():  # a frame cut off by the close
            self.metrics.reject(rejected.reason.value).inc()
        left = self.per_ip.get(conn.ip, 1) - 1
        if left > 0:
            self.per_ip[conn.ip] = left
        else:
            self.per_ip.pop(conn.ip, None)
        for mn in conn.mns:
            # Only remove the mapping if it still points here: a newer connection may
            # have claimed the MN already (field-quirks Q21).
            if self.sessions.get(mn) is conn:
                del self.sessions[mn]
        self.metrics.connections_open.dec()
        self.metrics.connections_closed.labels(conn.close_reason).inc()
        mns = sorted(conn.mns)
        self.log.info(
            "connection closed",
            conn_id=conn.conn_id,
            peer=conn.peer,
            mn=mns[0] if len(mns) == 1 else mns[:LOG_MNS],
            mn_count=len(mns),
            frames=conn.frames,
            rejects=conn.rejects,
            bytes=conn.bytes_in,
            duration_s=round(self.loop.time() - conn.opened_at, 3),
            reason=conn.close_reason,
        )

    def claim(self, mn: str, conn: DeviceConnection) -> None:
        """Point ``mn`` at ``conn``; an older connection that is left with no MN is closed."""
        old = self.sessions.get(mn)
        self.sessions[mn] = conn
        conn.mns.add(mn)
        if old is not None and old is not conn:
            old.mns.discard(mn)
            self.metrics.session_takeovers.inc()
            if not old.mns:
                old.close("superseded")

    # -- frames -------------------------------------------------------------------------

    def on_frame(self, conn: DeviceConnection, frame: Frame, now: float, wall_us: int) -> None:
        try:
            packet = decode(frame)
        except ProtocolError as exc:
            self.on_rejected(
                conn,
                Rejected(exc.reason, frame.raw, frame.offset, exc.detail, frame.crc_variant),
                now,
                wall_us,
            )
            return
        self.on_packet(conn, packet, now, wall_us)

    def on_packet(self, conn: DeviceConnection, packet: Packet, now: float, wall_us: int) -> None:
        metrics = self.metrics
        mn = packet.mn
        verdict = self.registry.admit(mn, packet.pw)
        if verdict in REFUSED:
            self._refuse_packet(conn, packet, verdict, now, wall_us)
            return
        conn.frames += 1
        conn.rejects_in_a_row = 0
        conn.auth_failures = 0
        conn.bytes_without_frame = 0
        if mn not in conn.mns or self.sessions.get(mn) is not conn:
            self.claim(mn, conn)
            if self.commands is not None:
                self.commands.on_claim(mn, conn, packet)
        if verdict is Verdict.FIRST_PASSWORD and packet.pw:
            self._record_password(mn, packet.pw)
        for quirk in packet.quirks:
            metrics.quirk(quirk.value).inc()
        metrics.crc_variant(packet.crc_variant.value).inc()
        cn_label = metrics.cn_label(packet.cn)
        kind = packet_kind(packet)
        if kind == "platform_only":
            ok, reason = False, "platform_only"
        elif verdict is Verdict.QUARANTINE:
            ok, reason = True, "quarantine"
        else:
            ok, reason = True, None
        row = FrameRow(
            wall_us,
            conn.peer,
            self.worker,
            mn,
            packet.st,
            packet.cn,
            packet.qn,
            ok,
            reason,
            tuple(q.value for q in packet.quirks),
            packet.raw,
        )
        if kind == "platform_only":
            # A command only the platform may send (e.g. 1012 from a device): archive,
            # count, no reply and no readings (design.md section 2).
            metrics.frame(cn_label, packet.version, "platform_only").inc()
            metrics.reject("platform_only").inc()
            self.writer.offer(Entry(row))
            self._touch(mn, conn, packet, wall_us, None, reject=True)
            return
        try:
            if verdict is Verdict.QUARANTINE:
                # Kept apart until an operator approves the MN: no value rows yet.
                metrics.auth_quarantined.inc()
                entry = Entry(row)
            else:
                entry = entry_for_packet(
                    packet, row, utc_offset_us=self.utc_offset_us, profile=self._profile(packet)
                )
                if self.forward is not None:  # queued in the outbox with the frame
                    entry.forward = self.forward(packet, kind)
        except ProtocolError as exc:
            self.on_rejected(
                conn,
                Rejected(exc.reason, packet.raw, -1, exc.detail, packet.crc_variant),
                now,
                wall_us,
            )
            return
        reply = reply_for(packet, reply_without_qn=self._reply_without_qn)
        if reply is None:
            accepted = self.writer.offer(entry)
        elif self._durable_ack:
            accepted = self.writer.offer(entry, _ReplyLater(conn, reply, now, _reply_cn(reply)))
        else:
            accepted = self.writer.offer(entry)
            if accepted:
                conn.send_reply(reply, now, _reply_cn(reply))
        if accepted:
            result = "quarantine" if verdict is Verdict.QUARANTINE else "accepted"
            metrics.frame(cn_label, packet.version, result).inc()
        else:
            metrics.frame(cn_label, packet.version, "queue_full").inc()
            metrics.rows_refused.labels("queue_full").inc(entry.row_count)
        self._touch(mn, conn, packet, wall_us, _first_data_time(entry), reject=False)
        if self.commands is not None:  # answers to commands, clock skew
            self.commands.on_packet(conn, packet, kind, wall_us, stored=accepted)

    def _profile(self, packet: Packet) -> Any:
        device = self.registry.get(packet.mn)
        if device is not None and device.profile:
            try:
                return get_profile(device.profile)
            except ProtocolError:
                pass  # an unknown profile name in the registry: fall back to the version
        return profile_for_version(packet.version)

    def _refuse_packet(
        self, conn: DeviceConnection, packet: Packet, verdict: Verdict, now: float, wall_us: int
    ) -> None:
        """Auth refused the packet: archive it (rate-limited), count, no reply, no rows."""
        if self.commands is not None:  # e.g. the answer to a 1072 with the new password
            self.commands.on_refused(conn, packet, wall_us)
        metrics = self.metrics
        metrics.auth_refused.labels(verdict.value).inc()
        metrics.frame(metrics.cn_label(packet.cn), packet.version, "refused").inc()
        conn.auth_failures += 1
        if self._take_archive_token(conn, now):
            row = FrameRow(
                wall_us, conn.peer, self.worker, packet.mn, packet.st, packet.cn, packet.qn,
                False, f"auth_{verdict.value}", tuple(q.value for q in packet.quirks), packet.raw,
            )  # fmt: skip
            self.writer.offer(Entry(row))
        else:
            metrics.archive_dropped.inc()
        if conn.auth_failures >= self.settings.auth.max_failures:
            conn.close("auth_failed")

    def _record_password(self, mn: str, password: str) -> None:
        """A registered device without a password sent one: remember it (in the background)."""
        self.registry.password_recorded(mn, password)
        store = self.store
        if store is None:
            return

        async def record() -> None:
            try:
                if await store.record_password(mn, password):
                    self.metrics.auth_passwords_recorded.inc()
            except Exception as exc:  # retried on the next frame after a registry refresh
                self.log.warning("recording a first password failed", mn=mn, error=str(exc))

        task = self.loop.create_task(record())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def on_rejected(
        self, conn: DeviceConnection, rejected: Rejected, now: float, wall_us: int
    ) -> None:
        metrics = self.metrics
        reason = rejected.reason
        if rejected.crc_variant is not CrcVariant.NONE and self._variant_allowed(rejected):
            self.on_frame(conn, reframe(rejected), now, wall_us)
            return
        metrics.reject(reason.value).inc()
        if rejected.crc_variant is not CrcVariant.NONE:
            metrics.crc_variant(rejected.crc_variant.value).inc()
        if reason is RejectReason.GARBAGE:
            skipped = getattr(rejected, "consumed", len(rejected.raw))
            metrics.resync_bytes.inc(skipped)
            conn.bytes_without_frame += skipped
            if conn.bytes_without_frame >= self.settings.listen.garbage_limit_bytes:
                conn.close("garbage")
            return
        conn.rejects += 1
        conn.rejects_in_a_row += 1
        conn.bytes_without_frame += len(rejected.raw)
        metrics.frame("other", "unknown", "rejected").inc()
        if self._take_archive_token(conn, now):
            row = FrameRow(
                wall_us, conn.peer, self.worker, None, None, None, None, False,
                reason.value, (), rejected.raw,
            )  # fmt: skip
            self.writer.offer(Entry(row))
        else:
            metrics.archive_dropped.inc()
        if conn.rejects_in_a_row >= self.settings.listen.max_rejects_before_close:
            conn.close("too_many_rejects")
        elif conn.bytes_without_frame >= self.settings.listen.garbage_limit_bytes:
            conn.close("garbage")

    def _variant_allowed(self, rejected: Rejected) -> bool:
        """A CRC that matched another algorithm: accepted if the device is allowed it."""
        if not self.registry.devices:
            return False
        try:
            mn = decode(reframe(rejected)).mn
        except ProtocolError:
            return False
        return self.registry.allows_variant(mn, rejected.crc_variant.value)

    def _take_archive_token(self, conn: DeviceConnection, now: float) -> bool:
        """Token bucket: rejected frames archived per connection per minute."""
        tokens = conn.archive_tokens + (now - conn.archive_refill_at) * self._archive_rate
        conn.archive_refill_at = now
        if tokens >= 1.0:
            conn.archive_tokens = min(tokens, self._archive_burst) - 1.0
            return True
        conn.archive_tokens = tokens
        return False

    # -- replies ------------------------------------------------------------------------

    def on_reply_sent(self, nbytes: int, received_at: float, cn: str) -> None:
        self.metrics.bytes_out.inc(nbytes)
        self.metrics.reply(cn).inc()
        self.metrics.reply_latency.observe(self.loop.time() - received_at)

    def on_reply_lost(self, cn: str) -> None:
        """The rows became durable after the device went away; it will resend them."""

    # -- presence -----------------------------------------------------------------------

    def _touch(
        self,
        mn: str,
        conn: DeviceConnection,
        packet: Packet,
        wall_us: int,
        data_time_us: int | None,
        *,
        reject: bool,
    ) -> None:
        p = self.presence.get(mn)
        if p is None:
            p = _Presence(wall_us, wall_us, None, conn.peer, packet.version, 0, 0)
            self.presence[mn] = p
        p.last_seen_us = wall_us
        p.peer = conn.peer
        p.version = packet.version
        if reject:
            p.rejects += 1
        else:
            p.frames += 1
        # Backfilled history must not move last_data_time backwards.
        if data_time_us is not None and (
            p.last_data_time_us is None or data_time_us > p.last_data_time_us
        ):
            p.last_data_time_us = data_time_us

    def take_presence(self) -> list[PresenceRow]:
        """The presence changes since the last call, as rows (one per MN)."""
        current, self.presence = self.presence, {}
        return [
            PresenceRow(
                mn,
                p.first_seen_us,
                p.last_seen_us,
                p.last_data_time_us,
                p.peer,
                self.worker,
                p.version,
                p.frames,
                p.rejects,
            )
            for mn, p in current.items()
        ]

    # -- flow control ---------------------------------------------------------------------

    def pause_all(self, *, shutdown: bool = False) -> None:
        """High water (or shutdown): stop reading on every connection; TCP then slows the
        devices."""
        if self.paused:
            return
        self.paused = True
        for conn in self.connections:
            conn.pause()
        if not shutdown:
            self.log.warning(
                "write queue above high water; reading paused", connections=len(self.connections)
            )

    def resume_all(self) -> None:
        """Low water: resume reading in slices of RESUME_SLICE connections per tick."""
        if not self.paused:
            return
        self.paused = False
        self.log.info("write queue below low water; reading resumed")
        self._resume_slice(list(self.connections), 0)

    def _resume_slice(self, conns: list[DeviceConnection], start: int) -> None:
        if self.paused:
            return  # paused again before we finished: leave the rest paused
        for conn in conns[start : start + RESUME_SLICE]:
            conn.resume()
        if start + RESUME_SLICE < len(conns):
            self.loop.call_soon(self._resume_slice, conns, start + RESUME_SLICE)

    def paused_count(self) -> int:
        return len(self.connections) if self.paused else 0

    # -- periodic sweep -------------------------------------------------------------------

    def sweep(self) -> None:
        """Close idle connections, and connections whose frame never completed.

        Connections whose reading we paused (backpressure, rate limit) are not judged:
        their silence is ours. A half-received frame older than the partial-frame timeout
        is dropped and its connection closed: a DAU that stalls in mid-frame for minutes
        is broken (it reconnects), and a peer dribbling a byte at a time is reaped."""
        if self.paused:
            return
        now = self.loop.time()
        listen = self.settings.listen
        idle_before = now - listen.idle_timeout_s
        partial_before = now - listen.partial_frame_timeout_s
        wall_us: int | None = None
        for conn in list(self.connections):
            if conn.throttled or conn.closed:
                continue
            if conn.partial_since is not None and conn.partial_since < partial_before:
                conn.partial_since = None
                rejected = conn.framer.discard_partial()
                if rejected is not None:
                    if wall_us is None:
                        wall_us = time.time_ns() // 1000
                    self.on_rejected(conn, rejected, now, wall_us)
                conn.close("partial_timeout", abort=True)
            elif conn.last_rx < idle_before:
                conn.close("idle_timeout", abort=True)


class _ReplyLater:
    """The ``on_durable`` callback of an entry: send its reply once it is committed."""

    __slots__ = ("cn", "conn", "received_at", "reply")

    def __init__(self, conn: DeviceConnection, reply: bytes, received_at: float, cn: str) -> None:
        self.conn = conn
        self.reply = reply
        self.received_at = received_at
        self.cn = cn

    def __call__(self) -> None:
        self.conn.send_reply(self.reply, self.received_at, self.cn)


def _reply_cn(reply: bytes) -> str:
    # Replies are built by protocol.reply_for: "CN=9014" or "CN=9013" is always present.
    i = reply.find(b"CN=")
    return reply[i + 3 : i + 7].decode("ascii") if i >= 0 else "other"


def _first_data_time(entry: Entry) -> int | None:
    if entry.readings:
        return entry.readings[0].data_time_us
    if entry.infos:
        return entry.infos[0].data_time_us
    if entry.statuses:
        return entry.statuses[0].data_time_us
    return None
