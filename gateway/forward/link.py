"""One TCP connection to an upstream platform: writes frames, reads its replies."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from protocol import Frame, FrameBuffer, ProtocolError, decode

if TYPE_CHECKING:
    from gateway.forward.upstream import Device, Item, Upstream

__all__ = ["Link"]


class Link(asyncio.Protocol):
    """An upstream connection, for one device (``per_device``) or all (``shared``).

    The write buffer limits are (0, 0): ``pause_writing`` fires whenever a write is not
    taken by the kernel at once and ``resume_writing`` when it has been, which is when a
    frame that asked for no reply counts as delivered ("on write").
    """

    __slots__ = (
        "closed",
        "device",
        "framer",
        "idle_since",
        "paused",
        "progress",
        "transport",
        "unflushed",
        "upstream",
    )

    def __init__(self, upstream: Upstream, device: Device | None) -> None:
        self.upstream = upstream
        self.device = device
        """The device this connection carries (``per_device``), or None (``shared``)."""
        self.transport: asyncio.Transport | None = None
        self.framer = FrameBuffer()
        self.unflushed: list[tuple[Device, Item]] = []
        """Frames written that asked for no reply, not yet taken by the kernel."""
        self.paused = False
        self.closed = False
        self.progress = False
        """A frame was settled on this connection (a connection that drops before any is
        not a sign the upstream works)."""
        self.idle_since: float | None = None

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport implements asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=0, low=0)

    def data_received(self, data: bytes) -> None:
        for record in self.framer.feed(data):
            if type(record) is not Frame:
                continue  # garbage from the upstream is not our concern: no reply pending
            try:
                packet = decode(record)
            except ProtocolError:
                continue
            self.upstream.on_packet(self, packet)
            if self.closed:
                return

    def eof_received(self) -> bool | None:
        return None  # close: the upstream will read no more either

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.upstream.on_drained(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.upstream.on_lost(self, exc)

    # -- used by the upstream -----------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.transport is not None and not self.closed and not self.paused

    def write(self, data: bytes) -> bool:
        """Write ``data``; True when the kernel took all of it at once."""
        transport = self.transport
        assert transport is not None
        transport.write(data)
        return transport.get_write_buffer_size() == 0

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
