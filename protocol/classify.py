"""What a decoded packet is, from the platform's point of view.

``packet_kind`` answers one question for the gateway: store it and maybe reply
(``upload``, ``notify``), match it to a pending command (``answer``), archive it as a
frame a device should not send (``platform_only``), or treat it heuristically
(``unknown``). The answer comes from the CN table's ``device_role`` column of the
packet's profile (``protocol/data/cn.*.csv``), not from code.

Uploads and answers share CNs (2011 is both the platform's "start real-time data" request
and the device's upload; 1011 is both "get time" and its answer). A CN whose device role
is ``upload`` is an upload whatever its Flag; get-type answers (1011, 1061, 1063, 3017,
3018) are ``answer``.
"""

from __future__ import annotations

from typing import Final, Literal

from protocol.codes import CnInfo, Profile, get_profile, profile_for_version
from protocol.records import Packet

__all__ = ["PacketKind", "cn_info_for", "packet_kind"]

PacketKind = Literal["upload", "notify", "answer", "platform_only", "unknown"]

_KIND_OF_ROLE: Final[dict[str, PacketKind]] = {
    "upload": "upload",
    "notify": "notify",
    "answer": "answer",
    "none": "platform_only",
}
# A CN missing from a 2017 packet's profile may be one of the (provisional) 2025 additions
# sent with old version bits, e.g. a 9015 heartbeat with Flag=5.
_FALLBACK_PROFILE: Final = "2025"


def cn_info_for(packet: Packet, profile: Profile | None = None) -> CnInfo | None:
    """The CN table row for ``packet`` in ``profile`` (default: by its version)."""
    chosen = profile if profile is not None else profile_for_version(packet.version)
    info = chosen.cn_info(packet.cn)
    if info is None and chosen.name not in ("2005", _FALLBACK_PROFILE):
        info = get_profile(_FALLBACK_PROFILE).cn_info(packet.cn)
    return info


def packet_kind(packet: Packet, profile: Profile | None = None) -> PacketKind:
    """upload, notify, answer, platform_only or unknown (see the module docstring)."""
    info = cn_info_for(packet, profile)
    if info is None:
        return "unknown"
    return _KIND_OF_ROLE.get(info.device_role, "unknown")
