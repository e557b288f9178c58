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

Speed: the inner loop touches each field once and builds each row with ``tuple.__new__``
from a tuple, skipping the NamedTuple constructor's argument handling
(benchmarks/storage.py prints the per-row figure).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from protocol.errors import ProtocolError
from protocol.records import Packet
from protocol.values import parse_number, parse_time_us
from storage.base import Entry, FrameRow, InfoRow, ReadingRow, StatusRow

if TYPE_CHECKING:
    from protocol.codes import Profile

__all__ = ["entry_for_packet", "frame_row"]


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
    new_row = _new_tuple
    readings: list[ReadingRow] = []
    infos: list[InfoRow] = []
    statuses: list[StatusRow] = []
    pol_id: str | None = None

    records = packet.records
    for record in records:
        dt_text = record.data_time
        data_time = received if dt_text is None else parse_time_us(dt_text) - utc_offset_us
        for code, fields in record.data.items():
            rtd = avg = min_ = max_ = cou = zs_rtd = zs_avg = zs_min = zs_max = None
            flag = eflag = None
            sample: int | None = None
            extra: dict[str, str] | None = None
            raw: str | None = None
            # One pass over the fields; the if-chain is ordered by frequency (Rtd/Flag in
            # real-time data, Avg/Min/Max/Cou in interval data): measured faster than a
            # dict dispatch into a slot list, and the row is built once, as a tuple.
            for f, v in fields.items():
                if f == "Rtd":
                    rtd = parse_number(v)
                elif f == "Flag":
                    flag = v
                elif f == "Avg":
                    avg = parse_number(v)
                elif f == "Min":
                    min_ = parse_number(v)
                elif f == "Max":
                    max_ = parse_number(v)
                elif f == "Cou":
                    cou = parse_number(v)
                elif f == "ZsRtd":
                    zs_rtd = parse_number(v)
                elif f == "ZsAvg":
                    zs_avg = parse_number(v)
                elif f == "ZsMin":
                    zs_min = parse_number(v)
                elif f == "ZsMax":
                    zs_max = parse_number(v)
                elif f == "EFlag":
                    eflag = v
                elif f == "SampleTime":
                    sample = _time_or_none(v, utc_offset_us)
                elif f == "Info":
                    if pol_id is None:
                        pol_id = packet.cp.get("PolId", "")
                    infos.append(
                        InfoRow(data_time, mn, cn, pol_id, code, v, parse_number(v), received)
                    )
                    continue
                elif f in {"RS", "RT"}:
                    statuses.append(
                        StatusRow(data_time, mn, cn, code, f, v, parse_number(v), received)
                    )
                    continue
                else:
                    if extra is None:
                        extra = {}
                    extra[f] = v
                raw = f"{f}={v}" if raw is None else f"{raw},{f}={v}"
            if raw is None:
                continue
            readings.append(
                new_row(
                    ReadingRow,
                    (
                        data_time,
                        mn,
                        cn,
                        code,
                        normalise(code, st),
                        rtd,
                        avg,
                        min_,
                        max_,
                        cou,
                        zs_rtd,
                        zs_avg,
                        zs_min,
                        zs_max,
                        flag,
                        eflag,
                        sample,
                        None if extra is None else _json(extra),
                        raw,
                        received,
                    ),
                )
            )

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


def _json(fields: dict[str, str]) -> str:
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
