"""Which upstream platforms an accepted frame is forwarded to (``forward.upstreams``)."""

from __future__ import annotations

from collections.abc import Sequence

from config.settings import UpstreamConfig
from protocol import Packet
from storage import ForwardTo

__all__ = ["Selector"]


class _Filter:
    __slots__ = ("cns", "mns", "name", "sts")

    def __init__(self, up: UpstreamConfig) -> None:
        self.name = up.name
        self.mns = frozenset(up.mns) or None
        self.sts = frozenset(up.sts) or None
        self.cns = frozenset(up.cns) or None

    def wants(self, packet: Packet, kind: str) -> bool:
        if self.mns is not None and packet.mn not in self.mns:
            return False
        if self.sts is not None and packet.st not in self.sts:
            return False
        if self.cns is None:
            return kind == "upload"
        return packet.cn in self.cns


class Selector:
    """``selector(packet, kind) -> ForwardTo | None`` for a stored, accepted packet
    (``kind`` from ``protocol.packet_kind``). Called once per frame: a few set lookups."""

    def __init__(self, upstreams: Sequence[UpstreamConfig]) -> None:
        self._filters = tuple(_Filter(up) for up in upstreams)

    def __call__(self, packet: Packet, kind: str) -> ForwardTo | None:
        names = tuple(f.name for f in self._filters if f.wants(packet, kind))
        if not names:
            return None
        flag = packet.flag
        # Confirmed by the upstream's 9014 only when one will come: A=1 and a QN to echo
        # (protocol.md 6.3 item 4; without a QN platforms disagree, field-quirks Q10).
        confirm = flag is not None and bool(flag & 1) and packet.qn is not None
        return ForwardTo(names, confirm)
