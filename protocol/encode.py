"""Bytes out: frames, replies (9013/9014), QNs and platform-to-device commands.

Every outbound frame goes through ``encode_frame``: a 4-digit byte length, the segment, an
upper-case ``%04X`` CRC and CR LF (protocol.md 1.1, field-quirks Q20). Commands take a
17-digit QN and are checked against the per-CN parameter tables
(``protocol/data/commands.*.csv``) before anything is written, so a malformed command
(field-quirks Q20) cannot leave the gateway.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from protocol.classify import cn_info_for, packet_kind
from protocol.codes import CommandParam, Profile, profile_for_version
from protocol.crc import hj212_crc
from protocol.errors import ProtocolError, RejectReason
from protocol.records import Packet
from protocol.values import format_time_ms, parse_number, parse_time_us

__all__ = [
    "MAX_SEGMENT_BYTES",
    "VERSION_BITS",
    "QnGenerator",
    "build_segment",
    "command",
    "encode_frame",
    "reply_for",
]

# What the 4-digit length field can express (protocol.md 1.2).
MAX_SEGMENT_BYTES: Final = 9999
# Flag version bits (Flag >> 2) by version name (protocol.md section 4; 2025 provisional).
VERSION_BITS: Final[dict[str, int]] = {"2005": 0, "2017": 1, "2025": 2}
# ST of every interaction reply (9011-9014) the platform sends (protocol.md 6.3).
_REPLY_ST: Final = "91"
# Characters that would break the frame's grammar inside a header value or CP key/value.
_HEADER_BAD: Final = frozenset(";,=&\r\n")
_VALUE_BAD: Final = frozenset(";,&\r\n")
_KEY_BAD: Final = frozenset(";,=&\r\n \t")


def encode_frame(segment: str | bytes) -> bytes:
    """``##`` + 4-digit byte length + segment + upper-case CRC + CR LF."""
    data = segment.encode("utf-8") if isinstance(segment, str) else bytes(segment)
    size = len(data)
    if size > MAX_SEGMENT_BYTES:
        raise ProtocolError(RejectReason.TOO_LONG, f"segment of {size} bytes")
    return b"##%04d%s%04X\r\n" % (size, data, hj212_crc(data))


def _check_text(value: str, bad: frozenset[str], what: str) -> None:
    if bad.intersection(value):
        raise ProtocolError(RejectReason.BAD_SEGMENT, f"{what} contains a separator: {value!r}")


def _cp_body(cp: str | Sequence[tuple[str, str]]) -> str:
    if isinstance(cp, str):
        if cp.startswith("CP=&&") and cp.endswith("&&") and len(cp) >= 7:
            return cp[5:-2]
        return cp
    parts: list[str] = []
    last_code: str | None = None
    for key, value in cp:
        if not key:
            raise ProtocolError(RejectReason.BAD_SEGMENT, "CP key is empty")
        _check_text(key, _KEY_BAD, "CP key")
        if "&&" in value or (
            _VALUE_BAD.intersection(value) and not (value.startswith("//") and value.endswith("//"))
        ):
            raise ProtocolError(RejectReason.BAD_SEGMENT, f"CP value of {key} needs //...//")
        code, dash, _ = key.partition("-")
        # Fields of one code are joined with ",", items with ";" (protocol.md 3.2).
        if parts:
            parts.append("," if dash and code == last_code else ";")
        parts.append(f"{key}={value}")
        last_code = code if dash else None
    return "".join(parts)


def build_segment(
    *,
    qn: str | None,
    st: str | None,
    cn: str,
    pw: str | None,
    mn: str,
    flag: int | None,
    cp: str | Sequence[tuple[str, str]],
    pnum: int | None = None,
    pno: int | None = None,
) -> str:
    """The data segment text, fields in the standard's order; QN/ST/PW/Flag are omitted
    when None. ``cp`` is the data area already formatted (with or without ``CP=&&...&&``)
    or ``(key, value)`` pairs. Separators inside values raise ``ProtocolError``."""
    items: list[str] = []
    for name, value in (("QN", qn), ("ST", st), ("CN", cn), ("PW", pw), ("MN", mn)):
        if value is None:
            continue
        _check_text(value, _HEADER_BAD, name)
        items.append(f"{name}={value}")
    if flag is not None:
        if not 0 <= flag <= 255:
            raise ProtocolError(RejectReason.BAD_FLAG, f"Flag={flag}")
        items.append(f"Flag={flag}")
    for name, number in (("PNUM", pnum), ("PNO", pno)):
        if number is not None:
            if not 0 <= number <= 9999:
                raise ProtocolError(RejectReason.BAD_PNUM, f"{name}={number}")
            items.append(f"{name}={number}")
    items.append(f"CP=&&{_cp_body(cp)}&&")
    return ";".join(items)


def reply_for(
    packet: Packet,
    *,
    reply_without_qn: bool = False,
    reply_unknown_version: bool = False,
    profile: Profile | None = None,
) -> bytes | None:
    """The reply a device packet asks for, or None when none is due.

    A=1 uploads get 9014, notifications (1013, the 2025 heartbeat 9015) 9013, each as the
    CN table says; unknown CNs get 9014 when the CP has ``DataTime``, else 9013
    (protocol.md 11). The reply echoes QN, PW and MN, uses ST=91, the request's version
    bits with A and D cleared, and ``CP=&&&&`` (field-quirks Q11, Q18). None when A=0,
    for answers and platform-only CNs, without a QN (unless ``reply_without_qn``), and
    for unknown version bits (unless ``reply_unknown_version``, field-quirks Q11).
    Never raises for a decoded packet.
    """
    flag = packet.flag
    if flag is None or not flag & 1:
        return None
    if packet.version.startswith("v") and not reply_unknown_version:
        return None
    kind = packet_kind(packet, profile)
    if kind in ("answer", "platform_only"):
        return None
    if kind == "unknown":
        reply_cn = "9014" if "DataTime" in packet.cp else "9013"
    else:
        info = cn_info_for(packet, profile)
        reply_cn = (
            info.reply
            if info is not None and info.reply
            else ("9014" if kind == "upload" else "9013")
        )
    if packet.qn is None and not reply_without_qn:
        return None
    items = [] if packet.qn is None else [f"QN={packet.qn}"]
    items.append(f"ST={_REPLY_ST}")
    items.append(f"CN={reply_cn}")
    if packet.pw is not None:
        items.append(f"PW={packet.pw}")
    items.append(f"MN={packet.mn}")
    items.append(f"Flag={flag & ~3}")
    items.append("CP=&&&&")
    # The echoed values come from a frame that was valid on the wire, so they are safe
    # to write back as they are (no re-validation that could raise here).
    try:
        return encode_frame(";".join(items))
    except ProtocolError:  # a reply longer than 9,999 bytes: nothing sane to send
        return None


class QnGenerator:
    """Unique, increasing 17-digit QNs (``YYYYMMDDhhmmsszzz``) for commands.

    ``now_ms`` is the caller's local wall clock in milliseconds since 1970-01-01 read as
    if it were UTC (protocol/ never reads a clock). When a QN would not be greater than
    the previous one (same millisecond, clock stepped back), the previous one + 1 ms is
    used, so QNs from one generator never repeat (field-quirks Q20).
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = -1

    def next(self, now_ms: int) -> str:
        ms = now_ms if now_ms > self._last else self._last + 1
        self._last = ms
        return format_time_ms(ms)


def _check_param(param: CommandParam, key: str, value: str) -> None:
    kind = param.kind
    arg = param.arg
    if kind == "time14":
        if len(value) != 14:
            raise ProtocolError(RejectReason.BAD_TIME, f"{key} must have 14 digits")
        parse_time_us(value)
        return
    if kind == "hhmmss":
        ok = len(value) == 6 and value.isdigit() and value.isascii()
        if not ok or int(value[:2]) > 23 or int(value[2:4]) > 59 or int(value[4:]) > 59:
            raise ProtocolError(RejectReason.BAD_TIME, f"{key} must be hhmmss")
        return
    _check_text(value, _HEADER_BAD, key)
    if kind == "int":
        low, _, high = arg.partition("-")
        if not (value.isdigit() and value.isascii()) or not int(low) <= int(value) <= int(high):
            raise ProtocolError(RejectReason.BAD_SEGMENT, f"{key} must be {low}..{high}")
    elif kind == "choice":
        if value not in arg.split("|"):
            raise ProtocolError(RejectReason.BAD_SEGMENT, f"{key} must be one of {arg}")
    elif kind == "code":
        if not (1 <= len(value) <= 6 and value.isascii() and value.isalnum()):
            raise ProtocolError(RejectReason.BAD_SEGMENT, f"{key} is not a factor code")
    elif kind == "info":
        if not (len(value) == 6 and value[0] == "i" and value.isascii() and value.isalnum()):
            raise ProtocolError(RejectReason.BAD_SEGMENT, f"{key} is not an info code")
    elif kind == "number":
        if parse_number(value) is None:
            raise ProtocolError(RejectReason.BAD_SEGMENT, f"{key} is not a number")
    else:  # text, info_item
        low, _, high = (arg or "1-960").partition("-")
        if not int(low) <= len(value) <= int(high):
            raise ProtocolError(RejectReason.BAD_SEGMENT, f"{key} must have {arg} characters")


def command(
    *,
    cn: str,
    mn: str,
    pw: str,
    st: str,
    version: str,
    qn: str,
    params: Sequence[tuple[str, str]] = (),
    ack: bool = True,
    profile: Profile | None = None,
) -> bytes:
    """A platform-to-device command frame, checked against the CN's parameter table.

    Flag = the version's bits | A (``ack``). Raises ``ProtocolError`` for a CN that is not
    a command of the profile (BAD_SEGMENT), an unknown version (BAD_FLAG), a QN that is
    not 17 digits of a valid time (BAD_TIME), a missing parameter (MISSING_FIELD) or an
    invalid one (BAD_SEGMENT, BAD_TIME).
    """
    bits = VERSION_BITS.get(version)
    if bits is None:
        raise ProtocolError(RejectReason.BAD_FLAG, f"unknown version {version!r}")
    chosen = profile if profile is not None else profile_for_version(version)
    spec = chosen.command_params(cn)
    if spec is None:
        raise ProtocolError(
            RejectReason.BAD_SEGMENT, f"CN {cn} is not a command of profile {chosen.name}"
        )
    if len(qn) != 17:
        raise ProtocolError(RejectReason.BAD_TIME, "QN must have 17 digits")
    parse_time_us(qn)
    for name, value in (("MN", mn), ("PW", pw), ("ST", st)):
        if not value:
            raise ProtocolError(RejectReason.MISSING_FIELD, f"no {name}")
    by_name = {p.param: p for p in spec}
    seen: dict[str, str] = {}
    for key, value in params:
        param = by_name.get(key)
        if param is None and "-" in key:
            param = by_name.get("*-" + key.partition("-")[2])
        if param is None:
            raise ProtocolError(RejectReason.BAD_SEGMENT, f"CN {cn} takes no parameter {key}")
        if key in seen:
            raise ProtocolError(RejectReason.BAD_SEGMENT, f"parameter {key} given twice")
        _check_param(param, key, value)
        seen[param.param] = value
        seen[key] = value
    for param in spec:
        if param.required and param.param not in seen:
            raise ProtocolError(RejectReason.MISSING_FIELD, f"CN {cn} needs {param.param}")
    info_id = seen.get("InfoId")
    if info_id is not None and "*-Info" in seen and f"{info_id}-Info" not in seen:
        raise ProtocolError(RejectReason.BAD_SEGMENT, f"the item must be {info_id}-Info")
    segment = build_segment(
        qn=qn, st=st, cn=cn, pw=pw, mn=mn, flag=(bits << 2) | int(ack), cp=list(params)
    )
    return encode_frame(segment)
