"""Building packets, frames and entries for storage tests without the decoder."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import ClassVar

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
        raw=f"##CN={cn};MN={mn};DataTime={data_time}".encode(),
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


class FakeProfile:
    """Stands in for ``protocol.codes.Profile``: a fixed 2005 -> 2017 map, so expected
    rows do not depend on the code tables' contents."""

    ALIASES: ClassVar[dict[str, str]] = {"011": "w01018", "060": "w21003", "B01": "w00000"}

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    def normalise_code(self, code: str, st: str | None) -> str | None:
        self.calls.append((code, st))
        if code in self.ALIASES:
            return self.ALIASES[code]
        if len(code) == 6 and code[0] in "wa" and code[1:].isdigit():
            return code
        return None


def entry(pkt: Packet, received_at_us: int, *, peer: str = "127.0.0.1:5000") -> Entry:
    from storage.rows import entry_for_packet

    return entry_for_packet(
        pkt,
        frame(pkt, received_at_us, peer=peer),
        utc_offset_us=SHANGHAI_US,
        profile=FakeProfile(),  # type: ignore[arg-type]
    )


def realtime(mn: str, data_time: str, values: dict[str, str], *, flag: str = "N") -> Packet:
    """A 2011 packet: ``values`` code -> Rtd text."""
    return packet(
        "2011", data_time, {code: {"Rtd": v, "Flag": flag} for code, v in values.items()}, mn=mn
    )


MN_2017 = "88888880000000000000A001"

RECEIVED = us("2024-03-15 02:30:05")
"""When the scenario's frames arrive (10:30:05 in Shanghai)."""


def scenario() -> list[Entry]:
    """One packet of each kind the storage contract routes, plus a rejected frame."""
    mn = MN_2017
    pkts = [
        packet(
            "2011",
            "20240315103000",
            {
                "w01018": {
                    "SampleTime": "20240315100000",
                    "Rtd": "035.60",
                    "Flag": "N",
                    "EFlag": "A01",
                },
                "w21003": {"Rtd": "1.204", "Flag": "N"},
            },
            mn=mn,
        ),
        packet(
            "2051",
            "20240315102000",
            {
                "a21026": {
                    "Min": "10.1",
                    "Avg": "12.3",
                    "Max": "15.0",
                    "ZsAvg": "14.0",
                    "Cou": "1.2",
                    "Flag": "N",
                    "Xyz": "abc",
                },
            },
            mn=mn,
            st="31",
        ),
        packet(
            "3020",
            "20240315103000",
            {"i12001": {"Info": "1"}, "i13004": {"Info": "168.0"}, "i11001": {"Info": "log text"}},
            mn=mn,
            cp={"PolId": "w01018"},
        ),
        packet("2021", "20240315103000", {"SB1": {"RS": "1"}, "SB2": {"RS": "0"}}, mn=mn),
        packet("2041", "20240315000000", {"SB1": {"RT": "23.50"}}, mn=mn),
        packet("2081", "20240315080105", {}, mn=mn, cp={"RestartTime": "20240315075942"}),
        packet(
            "2011",
            "20240315103000",
            {"011": {"Rtd": "231.0", "Flag": "N"}},
            mn="88888880000001",
            version="2005",
        ),
        packet("20X1", "20240315103000", {"w01018": {"Rtd": "1"}}, mn=mn),
    ]
    entries = [entry(p, RECEIVED + i) for i, p in enumerate(pkts)]
    entries.append(Entry(frame(None, RECEIVED + 100, ok=False)))
    return entries


def iso(us_value: int) -> str:
    return datetime.fromtimestamp(us_value / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Every table as plain tuples with times as ISO text, ordered by key: the same shape for
# PostgreSQL and SQLite, so both stores can be compared with each other and with literals.
PG_TIME = """to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
DUMP_QUERIES = {
    "reading": (
        "SELECT {data_time}, mn, cn, code, code_2017, rtd, avg, min, max, cou, zs_rtd, zs_avg,"
        " zs_min, zs_max, flag, eflag, {sample_time}, {extra}, raw, {received_at}, revision"
        " FROM {s}reading ORDER BY mn, cn, data_time, code"
    ),
    "info": (
        "SELECT {data_time}, mn, cn, pol_id, info_code, value_text, value_num, {received_at},"
        " revision FROM {s}info ORDER BY mn, cn, data_time, pol_id, info_code"
    ),
    "device_status": (
        "SELECT {data_time}, mn, cn, device, field, value_text, value_num, {received_at},"
        " revision FROM {s}device_status ORDER BY mn, cn, data_time, device, field"
    ),
    "frame": (
        "SELECT {received_at}, peer, worker, mn, st, cn, qn, ok, reason, raw"
        " FROM {s}frame ORDER BY received_at, id"
    ),
}


_KEY_INDEXES = {"reading": (1, 2, 0, 3), "info": (1, 2, 0, 3, 4), "device_status": (1, 2, 0, 3, 4)}


def _normalise(table: str, rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    """Plain Python values, ordered by key in code-point order (independent of collation)."""
    out = []
    for r in rows:
        row = list(r)
        if table == "reading" and row[17] is not None:
            row[17] = json.loads(str(row[17]))
        if table == "frame":
            row[7] = bool(row[7])
            row[9] = bytes(row[9])  # type: ignore[call-overload]
        out.append(tuple(row))
    keys = _KEY_INDEXES.get(table)
    if keys is not None:
        out.sort(key=lambda r: tuple(r[i] for i in keys))  # type: ignore[no-any-return]
    return out


async def dump_pg(dsn: str) -> dict[str, list[tuple[object, ...]]]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        out = {}
        for table, sql in DUMP_QUERIES.items():
            q = sql.format(
                s="hj212.",
                data_time=PG_TIME.format(c="data_time"),
                sample_time=PG_TIME.format(c="sample_time"),
                received_at=PG_TIME.format(c="received_at"),
                extra="extra::text",
            )
            out[table] = _normalise(table, [tuple(r) for r in await conn.fetch(q)])
        return out
    finally:
        await conn.close()


def dump_sqlite(path: str) -> dict[str, list[tuple[object, ...]]]:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        out = {}
        for table, sql in DUMP_QUERIES.items():
            q = sql.format(
                s="",
                data_time="data_time",
                sample_time="sample_time",
                received_at="received_at",
                extra="extra",
            )
            out[table] = _normalise(table, [tuple(r) for r in conn.execute(q)])
        return out
    finally:
        conn.close()


async def pg_fetch(dsn: str, sql: str, *args: object) -> list[tuple[object, ...]]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


async def timescaledb_usable(dsn: str) -> bool:
    """The server offers the timescaledb extension and preloads its library: a fresh
    schema migrated there takes the TimescaleDB layout (hypertables)."""
    (row,) = await pg_fetch(
        dsn,
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') "
        "AND EXISTS (SELECT 1 FROM pg_settings "
        "WHERE name = 'timescaledb.max_background_workers' AND vartype = 'integer')",
    )
    return bool(row[0])
