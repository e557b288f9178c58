"""The roster test scenario: a generated roster over Jiangsu's 13 cities, presence and
frame rows for devices online, offline, never connected and unknown, and readings.

Every expected number in the tests is worked out by hand from the table below (see the
docstrings of the tests); nothing here computes an expectation.

The evaluation time is T = 2024-03-15 10:00:00 +08:00 (a Friday). Online windows: gas 30 s
-> 90 s, water 60 s -> 180 s, process 60 s -> 180 s, electricity 300 s -> 900 s, roster
interval 600 s -> 1800 s, no real-time data (rtd 0) -> hourly -> 3 h, outlet type
unknown 60 s -> 180 s. Silent: nothing for more than 2 h.

    MN      city / county (roster text)   unit type   presence         state at T
    NJ01    南京市 鼓楼区                  U1   gas    last T-30 s      online
    NJ02    南京市 鼓楼区                  U1   water  last T-5 h       offline, 24 h, silent
    NJ03    南京市 六合区, park 南京化学工业园区
                                           U2   water  last T-100 s     online
    XZ01    徐州市 鼓楼区                  U3   water  none             never
    CZ01    - 金坛市 (former 金坛区)       U4   gas    last T-60 s      online
    WX01    无锡市 江阴市, park 江阴高新技术产业开发区
                                           U5   elec.  last T-600 s     online
    SZ01    苏州市 吴中区                  U6   gas    last T-180 s     offline, 24 h
    NT01    - 海门市 (former 海门区)       U7   water  last T-30 h      offline, silent
    LYG01   连云港市 海州区                U8   water  none             never
    HA01    淮安市 清江浦区, rtd 600 s     U9   water  last T-1200 s    online
    YC01    盐城市 亭湖区                  U10  gas    last T+1 h,      online (archive)
                                                       frame T-20 s
    YZ01    扬州市 邗江区                  U11  gas    first T+2 h      never (as of T)
    ZJ01    镇江市 京口区                  U12  gas    last T+1 h,      offline, silent
                                                       frame T-30 h     (before the lookback)
    TZ01    泰州市 高新区                  U13  工况   last T-10 s      online
    SQ01    宿迁市 宿城区                  U14  water  last T-10 s      online
    SQ02    宿迁市 宿城区, rtd 0           U14  gas    last T-4 h       offline, 24 h, silent
    DIS01   苏州市 吴中区, disabled        U6   gas    last T-10 s      excluded
    NOCITY1 no city, no credit code (SQL)  own  -      last T-10 s      online (fallback 60 s)
    UNK1    not in the roster                          last T-5 min     unknown (counted)
    UNK2    not in the roster                          last T-2 d       too old
    UNK3    not in the roster                          first T+1 h      not yet
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import io
from collections.abc import Sequence
from typing import Any

import asyncpg

from gateway import cli, cmd_device, cmd_report
from storage.roster_codes import credit_code_check_char

TZ = dt.timezone(dt.timedelta(hours=8))
T_DT = dt.datetime(2024, 3, 15, 10, 0, 0, tzinfo=TZ)
T = int(T_DT.timestamp()) * 1_000_000
T_ISO = "2024-03-15T10:00:00+08:00"
S = 1_000_000
H = 3_600 * S
D = 24 * H


def credit_code(n: int, division: str = "320100") -> str:
    """A valid credit code for unit number n (the check character from GB 32100)."""
    body = f"91{division}MA{n:07d}"
    return body + credit_code_check_char(body)


HEADER = [
    "序号",
    "排污单位名称",
    "所属设区市",
    "所属县（市、区）",
    "统一社会信用代码",
    "排污许可证编码",
    "行业类别",
    "是否与市级平台联网",
    "是否与省级平台联网",
    "监控内容",
    "备注",
    "MN",
    "排口类型",
    "所属园区",
    "实时数据间隔(秒)",
]

# (MN, unit number, unit name, city column, county, type, park, rtd interval)
ROSTER: list[tuple[str, int, str, str, str, str, str, str]] = [
    ("NJ01", 1, "南京鼓楼示例热电有限公司", "南京市", "鼓楼区", "废气", "", ""),
    ("NJ02", 1, "南京鼓楼示例热电有限公司", "南京市", "鼓楼区", "废水", "", ""),
    ("NJ03", 2, "南京示例化工有限公司", "南京市", "六合区", "废水", "南京化学工业园区", ""),
    ("XZ01", 3, "徐州鼓楼示例污水处理有限公司", "徐州市", "鼓楼区", "废水", "", ""),
    ("CZ01", 4, "金坛示例材料有限公司", "", "金坛市", "废气", "", ""),
    ("WX01", 5, "江阴示例钢铁有限公司", "无锡市", "江阴市", "用电", "江阴高新技术产业开发区", ""),
    ("SZ01", 6, "苏州示例环保能源有限公司", "苏州市", "吴中区", "废气", "", ""),
    ("NT01", 7, "海门示例印染有限公司", "", "海门市", "废水", "", ""),
    ("LYG01", 8, "连云港示例制药有限公司", "连云港市", "海州区", "废水", "", ""),
    ("HA01", 9, "淮安示例盐化有限公司", "淮安市", "清江浦区", "废水", "", "600"),
    ("YC01", 10, "盐城示例热电有限公司", "盐城市", "亭湖区", "废气", "", ""),
    ("YZ01", 11, "扬州示例石化有限公司", "扬州市", "邗江区", "废气", "", ""),
    ("ZJ01", 12, "镇江示例造纸有限公司", "镇江市", "京口区", "废气", "", ""),
    ("TZ01", 13, "泰州示例医药有限公司", "泰州市", "高新区", "工况", "", ""),
    ("SQ01", 14, "宿迁示例酿酒有限公司", "宿迁市", "宿城区", "废水", "", ""),
    ("SQ02", 14, "宿迁示例酿酒有限公司", "宿迁市", "宿城区", "废气", "", "0"),
    ("DIS01", 6, "苏州示例环保能源有限公司", "苏州市", "吴中区", "废气", "", ""),
]


def mn(short: str) -> str:
    """The 24-character MN of a scenario device (``NJ01`` -> ``32000000000000000000NJ01``)."""
    return "32" + short.rjust(22, "0")


def roster_csv(rows: Sequence[tuple[str, int, str, str, str, str, str, str]] = ROSTER) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(HEADER)
    for i, (short, unit, name, city, county, kind, park, rtd) in enumerate(rows, start=1):
        code = credit_code(unit)
        w.writerow(
            [
                i,
                name,
                city,
                county,
                code,
                f"{code}001P",
                "示例行业",
                "是",
                "否" if i % 2 else "是",
                f"{kind}：流量",
                "",
                mn(short),
                kind,
                park,
                rtd,
            ]
        )
    return buf.getvalue()


def main(argv: list[str]) -> int:
    """The CLI with the roster commands (the others need the whole gateway)."""
    parser: argparse.ArgumentParser = cli._Parser(prog="hj212-gateway")
    sub = parser.add_subparsers(dest="command", parser_class=cli._Parser)
    cmd_device.register(sub)
    cmd_report.register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


def ts(us: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)


# (MN, first_seen, last_seen) relative to T, in microseconds
PRESENCE: list[tuple[str, int, int]] = [
    (mn("NJ01"), -10 * D, -30 * S),
    (mn("NJ02"), -10 * D, -5 * H),
    (mn("NJ03"), -3 * D, -100 * S),
    (mn("CZ01"), -1 * D, -60 * S),
    (mn("WX01"), -3 * D, -600 * S),
    (mn("SZ01"), -3 * D, -180 * S),
    (mn("NT01"), -3 * D, -30 * H),
    (mn("HA01"), -3 * D, -1200 * S),
    (mn("YC01"), -2 * D, +1 * H),
    (mn("YZ01"), +2 * H, +3 * H),
    (mn("ZJ01"), -3 * D, +1 * H),
    (mn("TZ01"), -3 * D, -10 * S),
    (mn("SQ01"), -3 * D, -10 * S),
    (mn("SQ02"), -3 * D, -4 * H),
    (mn("DIS01"), -3 * D, -10 * S),
    ("NOCITY1", -3 * D, -10 * S),
    ("UNK1", -1 * D, -5 * 60 * S),
    ("UNK2", -5 * D, -2 * D),
    ("UNK3", +1 * H, +2 * H),
]

END_0308 = int(dt.datetime(2024, 3, 9, tzinfo=TZ).timestamp()) * 1_000_000
"""2024-03-09 00:00 +08:00: the end of 2024-03-08 (exclusive)."""

# Frames in the archive (MN, received_at in microseconds since 1970).
FRAMES: list[tuple[str, int]] = [
    (mn("YC01"), T - 20 * S),
    (mn("YC01"), T + 1 * H),
    (mn("ZJ01"), T - 30 * H),
    (mn("ZJ01"), T + 1 * H),
    # the week before: NJ01 sent a frame a minute before 2024-03-08 ended
    (mn("NJ01"), END_0308 - 60 * S),
]


async def _setup(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        # the archive is partitioned by day; a default partition takes the test's old days
        await conn.execute("CREATE TABLE hj212.frame_test_default PARTITION OF hj212.frame DEFAULT")
        await conn.execute("UPDATE hj212.device SET enabled = false WHERE mn = $1", mn("DIS01"))
        await conn.execute(
            "INSERT INTO hj212.device (mn, unit_name) VALUES ('NOCITY1', '未登记城市的设备')"
        )
        await conn.executemany(
            "INSERT INTO hj212.presence (mn, first_seen, last_seen, peer, worker, version, frames)"
            " VALUES ($1, $2, $3, '10.0.0.9', 0, '2017', 10)",
            [(m, ts(T + first), ts(T + last)) for m, first, last in PRESENCE],
        )
        await conn.executemany(
            "INSERT INTO hj212.frame (received_at, peer, worker, mn, ok, raw)"
            " VALUES ($2, '10.0.0.9', 0, $1, true, 'x'::bytea)",
            [(m, ts(at)) for m, at in FRAMES],
        )
    finally:
        await conn.close()


def build_scenario(dsn: str, tmp_csv: Any) -> None:
    """Import the generated roster (GBK, through the CLI) and add presence and frames."""
    tmp_csv.write_bytes(roster_csv().encode("gbk"))
    rc = main(["device", "import", str(tmp_csv), "--dsn", dsn, "--json"])
    assert rc == 0
    asyncio.run(_setup(dsn))


# -- readings for the quality report (window: 2024-03-14 local) --------------------------

READINGS_SQL = """
INSERT INTO hj212.reading (data_time, mn, cn, code, rtd, avg, flag, raw, received_at)
SELECT t, $1, $2, $3, 1.0, 1.0, $4, 'Rtd=1.0', t
FROM generate_series($5::timestamptz, $6::timestamptz, $7::text::interval) AS t
ON CONFLICT DO NOTHING
"""

DAY = dt.datetime(2024, 3, 14, tzinfo=TZ)


def at(hours: float = 0, seconds: int = 0) -> dt.datetime:
    return DAY + dt.timedelta(hours=hours, seconds=seconds)


# (MN, CN, code, flag, first, last, step)
READINGS: list[tuple[str, int, str, str | None, dt.datetime, dt.datetime, str]] = [
    # NJ01: 20 hours x 2 codes of hourly data, 3 of them flagged D; one odd 2061 time in
    # hour 5 (same hour, another value); 100 real-time times, 2 flagged F, 1 without flag.
    (mn("NJ01"), 2061, "a21026", "N", at(0), at(19), "1 hour"),
    (mn("NJ01"), 2061, "a21002", "N", at(0), at(16), "1 hour"),
    (mn("NJ01"), 2061, "a21002", "D", at(17), at(19), "1 hour"),
    (mn("NJ01"), 2061, "a21026", "N", at(5.5), at(5.5), "1 hour"),
    (mn("NJ01"), 2011, "a21026", "N", at(1), at(1, 96 * 30), "30 seconds"),
    (mn("NJ01"), 2011, "a21026", "F", at(2), at(2, 30), "30 seconds"),
    (mn("NJ01"), 2011, "a21026", None, at(3), at(3), "30 seconds"),
    # NJ03: every hour, every minute, plus 10 extra real-time times at :30 (over the
    # expected 1440: capped)
    (mn("NJ03"), 2061, "w01018", "N", at(0), at(23), "1 hour"),
    (mn("NJ03"), 2011, "w01018", "N", at(0), at(24, -60), "1 minute"),
    (mn("NJ03"), 2011, "w01018", "N", at(4, 30), at(4, 30 + 9 * 60), "1 minute"),
    # HA01: 12 hours; 72 real-time times, all flagged M
    (mn("HA01"), 2061, "w01018", "N", at(0), at(11), "1 hour"),
    (mn("HA01"), 2011, "w01018", "M", at(0), at(0, 71 * 600), "10 minutes"),
    # SQ02: expects neither (hourly off, no real-time): 5 hourly values
    (mn("SQ02"), 2061, "a21026", "N", at(0), at(4), "1 hour"),
    # outside the window (the next local day) and an unknown MN: not counted
    (mn("NJ01"), 2061, "a21026", "N", at(24), at(25), "1 hour"),
    ("UNK1", 2061, "a21026", "N", at(0), at(23), "1 hour"),
]


async def _readings(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for row in READINGS:
            await conn.execute(READINGS_SQL, *row)
        await conn.execute("UPDATE hj212.device SET hourly = false WHERE mn = $1", mn("SQ02"))
    finally:
        await conn.close()


def add_readings(dsn: str) -> None:
    asyncio.run(_readings(dsn))
