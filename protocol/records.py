"""Typed records that leave protocol/: what the framer yields and what the decoder returns.

These types are the contract with storage/ and gateway/. Fields may be added; existing
names and meanings change only together with every caller.

Records are slotted dataclasses (chosen by measurement on the hot path, see
benchmarks/protocol.py). ``Packet`` keeps the decoded values as plain dicts of raw
text, exactly as ``../shared/vectors`` describes them: numeric parsing, units and
storage columns are the business of the layers above.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from protocol.errors import Quirk, RejectReason


class CrcVariant(str, Enum):  # noqa: UP042 - str() must stay the member name for callers
    """Which checksum algorithm matched a frame's CRC field."""

    HJ212 = "hj212"
    """The standard's algorithm (protocol.md section 2)."""
    MODBUS = "modbus"
    """CRC-16/MODBUS over the segment, written high byte first (field-quirks Q3)."""
    MODBUS_SWAPPED = "modbus_swapped"
    """CRC-16/MODBUS written low byte first (Q3)."""
    NONE = "none"
    """No variant matched (only on rejected frames)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame cut from the stream whose CRC matched an accepted variant.

    ``raw`` is the exact bytes from ``##`` up to and including the tail as received
    (no tail when it was missing); ``segment`` the data-segment bytes covered by the
    CRC. ``offset`` is the stream offset of the leading ``##`` (bytes fed so far).
    """

    raw: bytes
    segment: bytes
    offset: int
    crc_variant: CrcVariant
    quirks: tuple[Quirk, ...] = ()


@dataclass(frozen=True, slots=True)
class Rejected:
    """Bytes that did not form an acceptable frame, and why.

    ``raw`` holds the rejected bytes (bounded by the framer's limits); ``crc_variant``
    names a non-accepted CRC variant that did match, so a per-device allow-list can be
    offered to the operator.
    """

    reason: RejectReason
    raw: bytes
    offset: int
    detail: str = ""
    crc_variant: CrcVariant = CrcVariant.NONE
    consumed: int = -1
    """How many stream bytes this record accounts for (``raw`` may be a bounded excerpt of
    them, e.g. for a long run of garbage); -1 when not set, meaning ``len(raw)``."""


@dataclass(frozen=True, slots=True)
class Record:
    """One ``DataTime`` group of a CP. A standard packet has exactly one (or none)."""

    data_time: str | None
    """The ``DataTime`` text as received (14 or 17 digits), or None."""
    data: dict[str, dict[str, str]]
    """code -> field -> raw text, for every ``code-Field=value`` item of this group."""
    data_time_us: int | None = None
    """``data_time`` as microseconds since 1970-01-01, reading the wall clock as if it were
    UTC (``protocol.values.parse_time_us``; subtract the device zone's offset for UTC)."""


@dataclass(frozen=True, slots=True)
class Packet:
    """A decoded data segment.

    Header values are trimmed text; absent fields are None. ``header`` keeps every
    header field as received (the golden vectors compare against it), ``cp`` every CP
    key without a ``-``, ``data`` every ``code-Field=value`` item (all records merged,
    later values win), ``records`` the same items grouped by ``DataTime``.
    ``//text//`` values are given without the slashes.
    """

    qn: str | None
    st: str | None
    cn: str
    pw: str | None
    mn: str
    flag: int | None
    version: str
    """"2005", "2017", "2025", or "v<N>" for other version bits (with Quirk.UNKNOWN_VERSION)."""
    ack_requested: bool
    split: bool
    pnum: int | None
    pno: int | None
    header: dict[str, str]
    cp: dict[str, str]
    data: dict[str, dict[str, str]]
    records: tuple[Record, ...]
    quirks: tuple[Quirk, ...] = ()
    crc_variant: CrcVariant = CrcVariant.HJ212
    raw: bytes = field(default=b"", repr=False)
    """The whole frame as received (from Frame.raw); empty when decoded from a bare segment."""


# -- fast constructors ----------------------------------------------------------------
# A frozen dataclass __init__ stores each field through object.__setattr__, which costs
# several times what storing through the slot descriptors does (benchmarks/protocol.py
# prints both: ~2.5 us against ~0.8 us for Packet's 18 fields). The framer and decoder
# build one Frame, one Packet and one Record per frame, so they use these; the objects
# are the same as the ones the dataclass __init__ builds (still frozen afterwards).

_new = object.__new__


def _setters(cls: type, *names: str) -> tuple[Any, ...]:
    return tuple(cls.__dict__[name].__set__ for name in names)


_FRAME_SET = _setters(Frame, "raw", "segment", "offset", "crc_variant", "quirks")
_RECORD_SET = _setters(Record, "data_time", "data", "data_time_us")
_PACKET_SET = _setters(
    Packet, "qn", "st", "cn", "pw", "mn", "flag", "version", "ack_requested", "split", "pnum",
    "pno", "header", "cp", "data", "records", "quirks", "crc_variant", "raw",
)  # fmt: skip


def new_frame(
    raw: bytes, segment: bytes, offset: int, crc_variant: CrcVariant, quirks: tuple[Quirk, ...]
) -> Frame:
    """``Frame(raw, segment, offset, crc_variant, quirks)``, built faster."""
    frame: Frame = _new(Frame)
    s_raw, s_segment, s_offset, s_variant, s_quirks = _FRAME_SET
    s_raw(frame, raw)
    s_segment(frame, segment)
    s_offset(frame, offset)
    s_variant(frame, crc_variant)
    s_quirks(frame, quirks)
    return frame


def new_record(
    data_time: str | None, data: dict[str, dict[str, str]], data_time_us: int | None
) -> Record:
    """``Record(data_time, data, data_time_us)``, built faster."""
    record: Record = _new(Record)
    s_time, s_data, s_us = _RECORD_SET
    s_time(record, data_time)
    s_data(record, data)
    s_us(record, data_time_us)
    return record


def new_packet(  # noqa: PLR0917 - the fields of Packet, in order
    qn: str | None,
    st: str | None,
    cn: str,
    pw: str | None,
    mn: str,
    flag: int | None,
    version: str,
    ack_requested: bool,
    split: bool,
    pnum: int | None,
    pno: int | None,
    header: dict[str, str],
    cp: dict[str, str],
    data: dict[str, dict[str, str]],
    records: tuple[Record, ...],
    quirks: tuple[Quirk, ...],
    crc_variant: CrcVariant,
    raw: bytes,
) -> Packet:
    """``Packet(...)`` with every field given in declaration order, built faster."""
    packet: Packet = _new(Packet)
    (
        s_qn,
        s_st,
        s_cn,
        s_pw,
        s_mn,
        s_flag,
        s_version,
        s_ack_requested,
        s_split,
        s_pnum,
        s_pno,
        s_header,
        s_cp,
        s_data,
        s_records,
        s_quirks,
        s_crc_variant,
        s_raw,
    ) = _PACKET_SET
    s_qn(packet, qn)
    s_st(packet, st)
    s_cn(packet, cn)
    s_pw(packet, pw)
    s_mn(packet, mn)
    s_flag(packet, flag)
    s_version(packet, version)
    s_ack_requested(packet, ack_requested)
    s_split(packet, split)
    s_pnum(packet, pnum)
    s_pno(packet, pno)
    s_header(packet, header)
    s_cp(packet, cp)
    s_data(packet, data)
    s_records(packet, records)
    s_quirks(packet, quirks)
    s_crc_variant(packet, crc_variant)
    s_raw(packet, raw)
    return packet
