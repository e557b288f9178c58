"""One device connection: an ``asyncio.Protocol`` that feeds bytes to the framer.

This class is deliberately thin. ``data_received`` never awaits and never grows
anything without bound: bytes go into the connection's ``FrameBuffer`` (bounded), each
frame or rejection is handed to the ``Hub`` (session logic, storage, replies), and
replies come back through ``send_reply`` once their rows are durable.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, cast

from protocol import Frame, FrameBuffer

if TYPE_CHECKING:
    from gateway.hub import Hub


class DeviceConnection(asyncio.Protocol):
    """State of one TCP connection from a DAU (or from anything else that connects)."""

    __slots__ = (
        "archive_refill_at",
        "archive_tokens",
        "auth_failures",
        "bytes_in",
        "bytes_without_frame",
        "close_reason",
        "closed",
        "conn_id",
        "framer",
        "frames",
        "hub",
        "ip",
        "last_rx",
        "mns",
        "opened_at",
        "partial_since",
        "peer",
        "rejects",
        "rejects_in_a_row",
        "throttled",
        "tokens",
        "tokens_at",
        "transport",
    )

    def __init__(self, hub: Hub, conn_id: int) -> None:
        self.hub = hub
        self.conn_id = conn_id
        self.framer: FrameBuffer = hub.new_framer()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.ip = "?"
        self.mns: set[str] = set()
        self.opened_at = 0.0
        self.last_rx = 0.0
        self.partial_since: float | None = None
        self.bytes_in = 0
        self.bytes_without_frame = 0
        self.frames = 0
        self.rejects = 0
        self.rejects_in_a_row = 0
        self.closed = False
        self.close_reason = "peer_closed"
        self.archive_tokens = 0.0
        self.archive_refill_at = 0.0
        self.auth_failures = 0
        self.tokens = 0.0
        """Frames this connection may still deliver now (``listen.max_frames_per_s``)."""
        self.tokens_at = 0.0
        self.throttled = False
        """Reading paused by the frame rate limit (not by the hub's backpressure)."""

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport implements asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peername = transport.get_extra_info("peername")
        if isinstance(peername, tuple) and len(peername) >= 2:
            self.ip = str(peername[0])
            self.peer = f"{peername[0]}:{peername[1]}"
        now = self.hub.loop.time()
        self.opened_at = self.last_rx = now
        self.hub.on_open(self)

    def data_received(self, data: bytes) -> None:
        hub = self.hub
        now = hub.loop.time()
        wall_us = time.time_ns() // 1000
        self.last_rx = now
        self.bytes_in += len(data)
        hub.metrics.bytes_in.inc(len(data))
        items = self.framer.feed(data)
        for item in items:
            if self.closed:
                return
            if type(item) is Frame:
                hub.on_frame(self, item, now, wall_us)
            else:
                hub.on_rejected(self, item, now, wall_us)  # type: ignore[arg-type]
        if items and hub.frame_rate:
            self._charge(len(items), now)
        if self.framer.has_partial:
            # The partial-frame clock runs from the last progress: a frame completed in
            # this chunk restarts it (a device whose frames lack a tail always has the
            # newest one pending until the next arrives).
            if self.partial_since is None or items:
                self.partial_since = now
        else:
            self.partial_since = None

    def eof_received(self) -> bool | None:
        # The peer will send no more; what the framer still holds is an incomplete frame.
        for rejected in self.framer.close():
            self.hub.on_rejected(self, rejected, self.hub.loop.time(), time.time_ns() // 1000)
        return None  # let the transport close itself

    def pause_writing(self) -> None:
        # Replies are ~90 bytes; a peer that lets the write buffer reach its limit is
        # not reading them at all (field-quirks: a peer that never reads its replies).
        self.close("write_stalled", abort=True)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            if exc is not None:
                self.close_reason = "error"
        self.hub.on_close(self)

    # -- called by the hub ------------------------------------------------------------

    def send_reply(self, reply: bytes, received_at: float, cn: str) -> None:
        """Write a reply if the connection is still open (called once rows are durable)."""
        transport = self.transport
        if transport is None or self.closed or transport.is_closing():
            self.hub.on_reply_lost(cn)
            return
        transport.write(reply)
        self.hub.on_reply_sent(len(reply), received_at, cn)

    def close(self, reason: str, *, abort: bool = False) -> None:
        """Close with a reason (recorded in the close log line and the metric)."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    def pause(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        """Resume reading (the hub's backpressure ended), unless the rate limit holds it.
        The pause was ours, not the device's silence: the idle and partial-frame clocks
        start again from now."""
        if self.transport is not None and not self.closed and not self.throttled:
            now = self.hub.loop.time()
            self.last_rx = now
            if self.partial_since is not None:
                self.partial_since = now
            self.transport.resume_reading()

    # -- frame rate limit (token bucket) --------------------------------------------------

    def _charge(self, frames: int, now: float) -> None:
        """Take ``frames`` tokens; when the bucket is empty, pause reading for as long as
        the refill takes. The frames already read were handled: the limit only delays."""
        hub = self.hub
        rate = hub.frame_rate
        tokens = min(hub.frame_burst, self.tokens + (now - self.tokens_at) * rate) - frames
        self.tokens, self.tokens_at = tokens, now
        if tokens >= 0 or self.throttled or self.transport is None:
            return
        self.throttled = True
        hub.metrics.connections_throttled.inc()
        self.transport.pause_reading()
        hub.loop.call_later(-tokens / rate, self._unthrottle)

    def _unthrottle(self) -> None:
        self.throttled = False
        if not self.hub.paused:
            self.resume()
