"""From a decoded packet to the rows it stores: one call per packet, on the hot path.

Routing (design.md section 4):

- ``code-Field`` items whose field is not ``Info``, ``RS`` or ``RT`` -> ``hj212.reading``,
  one row per (record, code). ``Rtd Avg Min Max Cou ZsRtd ZsAvg ZsMin ZsMax`` become float
  columns, ``Flag``/``EFlag`` text, ``SampleTime`` a time; any other field goes into
  ``extra`` (a JSON object of raw text). ``raw`` keeps the code's reading fields exactly as
  received (``Rtd=035.20,Flag=N``), because re-serialising numbers changes their text
  (field-quirks Q24).
- ``iXXXXX-Info`` -> ``hj212.info`` (``pol_id`` from the packet's ``PolId`` or '').
- ``SBx-RS`` / ``SBx-RT`` -> ``hj212.device_status``; ``RestartTime`` of a 2081 upload ->
  ``device_status`` with device '' and field ``RestartTime``.

Times are integers (microseconds since 1970 UTC). A record's ``DataTime`` is converted once
per record, not once per row; a packet without ``DataTime`` is stored at the frame's
``received_at``. A non-numeric CN stores no value rows (the frame is still archived).

Speed: the inner loop touches each field once through a dict of field -> column slot and
builds each row with ``tuple.__new__`` from a list, which measured faster than keyword
construction of the NamedTuple (benchmarks/storage.py prints the per-row figure).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from protocol.values import parse_number, parse_time_us

from protocol.errors import ProtocolError
from protocol.records import Packet
from storage.base import Entry, FrameRow, InfoRow, ReadingRow, StatusRow

if TYPE_CHECKING:
    from protocol.codes import Profile

__all__ = ["entry_for_packet", "frame_row", "reading_row"]

# Column slots of ReadingRow that a field fills: (slot, kind). Kinds: 0 number, 1 text, 2 time.
_NUM: Final = 0
_TEXT: Final = 1
_TIME: Final = 2
_FIELD_SLOTS: Final[dict[str, tuple[int, int]]] = {
    "Rtd": (ReadingRow._fields.index("rtd"), _NUM),
    "Avg": (ReadingRow._fields.index("avg"), _NUM),
    "Min": (ReadingRow._fields.index("min"), _NUM),
    "Max": (ReadingRow._fields.index("max"), _NUM),
    "Cou": (ReadingRow._fields.index("cou"), _NUM),
    "ZsRtd": (ReadingRow._fields.index("zs_rtd"), _NUM),
    "ZsAvg": (ReadingRow._fields.index("zs_avg"), _NUM),
    "ZsMin": (ReadingRow._fields.index("zs_min"), _NUM),
    "ZsMax": (ReadingRow._fields.index("zs_max"), _NUM),
    "Flag": (ReadingRow._fields.index("flag"), _TEXT),
    "EFlag": (ReadingRow._fields.index("eflag"), _TEXT),
    "SampleTime": (ReadingRow._fields.index("sample_time_us"), _TIME),
}
_NOT_READING: Final = frozenset(("Info", "RS", "RT"))
_N_READING: Final = len(ReadingRow._fields)
_I_EXTRA: Final = ReadingRow._fields.index("extra")
_I_RAW: Final = ReadingRow._fields.index("raw")
_I_RECEIVED: Final = ReadingRow._fields.index("received_at_us")
_I_CODE_2017: Final = ReadingRow._fields.index("code_2017")
_TEMPLATE: Final[tuple[object, ...]] = (None,) * _N_READING

_new_tuple: Final = tuple.__new__
_RESTART_CN: Final = 2081


def frame_row(
    packet_or_none: Packet | None,
    *,
    received_at_us: int,
    peer: str,
    worker: int,
    raw: bytes,
    ok: bool,
    reason: str | None = None,
    quirks: tuple[str, ...] = (),
) -> FrameRow:
    """The archive row of one frame; header fields come from the packet when there is one."""
    if packet_or_none is None:
        return FrameRow(
            received_at_us, peer, worker, None, None, None, None, ok, reason, quirks, raw
        )
    p = packet_or_none
    return FrameRow(received_at_us, peer, worker, p.mn, p.st, p.cn, p.qn, ok, reason, quirks, raw)


def _time_or_none(text: str, utc_offset_us: int) -> int | None:
    """A field time (``SampleTime``): None when it is not a valid time, never an error."""
    try:
        t: int = parse_time_us(text)
        return t - utc_offset_us
    except ProtocolError:
        return None


def reading_row(  # noqa: PLR0917 (hot path: positional arguments are cheapest)
    data_time_us: int,
    mn: str,
    cn: int,
    code: str,
    code_2017: str | None,
    fields: dict[str, str],
    received_at_us: int,
    utc_offset_us: int,
) -> ReadingRow | None:
    """The reading row of one code's fields, or None when it has no reading field."""
    vals: list[object] = list(_TEMPLATE)
    raw_parts: list[str] = []
    extra: dict[str, str] | None = None
    slots = _FIELD_SLOTS
    for f, v in fields.items():
        slot = slots.get(f)
        if slot is None:
            if f in _NOT_READING:
                continue
            if extra is None:
                extra = {}
            extra[f] = v
        else:
            i, kind = slot
            if kind == _NUM:
                vals[i] = parse_number(v)
            elif kind == _TEXT:
                vals[i] = v
            else:
                vals[i] = _time_or_none(v, utc_offset_us)
        raw_parts.append(f + "=" + v)
    if not raw_parts:
        return None
    vals[0] = data_time_us
    vals[1] = mn
    vals[2] = cn
    vals[3] = code
    vals[_I_CODE_2017] = code_2017
    if extra is not None:
        vals[_I_EXTRA] = json.dumps(extra, ensure_ascii=False, separators=(",", ":"))
    vals[_I_RAW] = ",".join(raw_parts)
    vals[_I_RECEIVED] = received_at_us
    row: ReadingRow = _new_tuple(ReadingRow, vals)
    return row


def entry_for_packet(
    packet: Packet, frame: FrameRow, *, utc_offset_us: int, profile: Profile
) -> Entry:
    """Every row one accepted packet stores, with its frame row.

    ``utc_offset_us`` is the device zone's offset from UTC (Asia/Shanghai: +8 h), so
    ``DataTime`` wall-clock text becomes UTC by subtraction. Raises
    ``protocol.errors.ProtocolError`` when a record's ``DataTime`` is not a valid time
    (the decoder rejects such frames before they get here).
    """
    cn_text = packet.cn
    if not cn_text.isdigit():
        return Entry(frame)
    cn = int(cn_text)
    mn = packet.mn
    received = frame.received_at_us
    st = packet.st
    normalise: Callable[[str, str | None], str | None] = profile.normalise_code
    readings: list[ReadingRow] = []
    infos: list[InfoRow] = []
    statuses: list[StatusRow] = []
    pol_id: str | None = None

    records = packet.records
    for record in records:
        dt_text = record.data_time
        data_time = received if dt_text is None else parse_time_us(dt_text) - utc_offset_us
        for code, fields in record.data.items():
            routed = 0
            if "Info" in fields:
                if pol_id is None:
                    pol_id = packet.cp.get("PolId", "")
                text = fields["Info"]
                infos.append(
                    InfoRow(data_time, mn, cn, pol_id, code, text, parse_number(text), received)
                )
                routed = 1
            if "RS" in fields or "RT" in fields:
                for status_field in ("RS", "RT"):
                    text_s = fields.get(status_field)
                    if text_s is not None:
                        statuses.append(
                            StatusRow(
                                data_time,
                                mn,
                                cn,
                                code,
                                status_field,
                                text_s,
                                parse_number(text_s),
                                received,
                            )
                        )
                        routed += 1
            if routed == len(fields):
                continue
            row = reading_row(
                data_time,
                mn,
                cn,
                code,
                normalise(code, st),
                fields,
                received,
                utc_offset_us,
            )
            if row is not None:
                readings.append(row)

    if cn == _RESTART_CN:
        restart = packet.cp.get("RestartTime")
        if restart is not None:
            dt_text = packet.cp.get("DataTime")
            if dt_text is None and records:
                dt_text = records[0].data_time
            data_time = received if dt_text is None else parse_time_us(dt_text) - utc_offset_us
            statuses.append(
                StatusRow(data_time, mn, cn, "", "RestartTime", restart, None, received)
            )

    return Entry(frame, readings, infos, statuses)
