"""Building packets, frames and entries for storage tests without the decoder."""

from __future__ import annotations

from datetime import UTC, datetime

from protocol.records import Packet, Record
from storage.base import Entry, FrameRow

SHANGHAI_US = 8 * 3600 * 1_000_000
"""Asia/Shanghai is UTC+8 all year."""


def us(text: str) -> int:
    """``2024-03-15 10:30:00`` (UTC) -> microseconds since 1970."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1_000_000)


def packet(
    cn: str,
    data_time: str | None,
    data: dict[str, dict[str, str]],
    *,
    mn: str = "88888880000000000000A001",
    st: str = "32",
    cp: dict[str, str] | None = None,
    version: str = "2017",
) -> Packet:
    cp_all = dict(cp or {})
    if data_time is not None:
        cp_all.setdefault("DataTime", data_time)
    header = {"QN": "20240315103000123", "ST": st, "CN": cn, "PW": "123456", "MN": mn}
    return Packet(
        qn="20240315103000123",
        st=st,
        cn=cn,
        pw="123456",
        mn=mn,
        flag=5,
        version=version,
        ack_requested=True,
        split=False,
        pnum=None,
        pno=None,
        header=header,
        cp=cp_all,
        data=data,
        records=(Record(data_time=data_time, data=data),) if data or data_time else (),
        raw=b"##0000QN=...&&0000\r\n",
    )


def frame(
    pkt: Packet | None, received_at_us: int, *, ok: bool = True, peer: str = "127.0.0.1:5000"
) -> FrameRow:
    if pkt is None:
        return FrameRow(
            received_at_us, peer, 0, None, None, None, None, ok, "crc_mismatch", (), b"##bad"
        )
    return FrameRow(
        received_at_us, peer, 0, pkt.mn, pkt.st, pkt.cn, pkt.qn, ok, None, (), pkt.raw or b"##raw"
    )


def entry(pkt: Packet, received_at_us: int, *, profile_name: str = "2017") -> Entry:
    from protocol.codes import get_profile

    from storage.rows import entry_for_packet

    return entry_for_packet(
        pkt,
        frame(pkt, received_at_us),
        utc_offset_us=SHANGHAI_US,
        profile=get_profile(profile_name),
    )


def realtime(mn: str, data_time: str, values: dict[str, str], *, flag: str = "N") -> Packet:
    """A 2011 packet: ``values`` code -> Rtd text."""
    return packet(
        "2011", data_time, {code: {"Rtd": v, "Flag": flag} for code, v in values.items()}, mn=mn
    )
