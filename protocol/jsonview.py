"""Packets and rejects as JSON-ready dicts (the ``hj212-gateway decode`` output).

Accepted: ``ok`` (true), ``version``, ``qn``, ``st``, ``cn``, ``mn``, ``flag`` (int or
null), ``ack_requested``, ``pnum``, ``pno``, ``cp`` (plain CP keys, values as text),
``data`` (code -> field -> value: decimal text as a number, time fields such as
``SampleTime`` as text, empty as null, other text as a string), ``quirks`` (names) and
``crc_variant``; with ``raw_values`` also ``data_raw`` (the same shape, every value as the
text received). Rejected: ``ok`` (false), ``reason``, ``offset``, ``excerpt`` (short,
escaped, password masked). The password is never included.
"""

from __future__ import annotations

from typing import Final

from protocol.mask import excerpt
from protocol.records import Packet, Rejected
from protocol.values import TIME_FIELDS, parse_number

__all__ = ["json_value", "packet_to_json", "rejected_to_json"]

# CP keys whose values are secrets (1072 NewPW, 2025 key management).
_SECRET_KEYS: Final = frozenset({"NewPW", "NewSK", "SK", "PW"})
_MASKED: Final = "***"


def json_value(field: str, text: str) -> object:
    """One data value for JSON: number, text, or None for empty text."""
    if not text:
        return None
    if field in TIME_FIELDS:
        return text
    number = parse_number(text)
    if number is None:
        return text
    stripped = text.strip()
    if "." not in stripped:
        return int(stripped)
    return number


def packet_to_json(packet: Packet, *, raw_values: bool = False) -> dict[str, object]:
    """The decode CLI's object for an accepted packet (see the module docstring)."""
    result: dict[str, object] = {
        "ok": True,
        "version": packet.version,
        "qn": packet.qn,
        "st": packet.st,
        "cn": packet.cn,
        "mn": packet.mn,
        "flag": packet.flag,
        "ack_requested": packet.ack_requested,
        "pnum": packet.pnum,
        "pno": packet.pno,
        "cp": {k: (_MASKED if k in _SECRET_KEYS else v) for k, v in packet.cp.items()},
        "data": {
            code: {f: json_value(f, v) for f, v in fields.items()}
            for code, fields in packet.data.items()
        },
        "quirks": [q.value for q in packet.quirks],
        "crc_variant": packet.crc_variant.value,
    }
    if raw_values:
        result["data_raw"] = {code: dict(fields) for code, fields in packet.data.items()}
    return result


def rejected_to_json(rejected: Rejected, *, limit: int = 160) -> dict[str, object]:
    """The decode CLI's object for a reject: ok, reason, offset, excerpt."""
    return {
        "ok": False,
        "reason": rejected.reason.value,
        "offset": rejected.offset,
        "excerpt": excerpt(rejected.raw, limit),
    }
