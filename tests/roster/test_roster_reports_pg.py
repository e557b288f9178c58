"""Coverage, progress and quality on PostgreSQL against the scenario of rosterkit.py.

Every expected number is a literal worked out by hand from the scenario table in
rosterkit's docstring (the per-city sums are checked in the comments)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from rosterkit import T_ISO, T, add_readings, build_scenario, main, mn

from storage.base import StorageError
from storage.roster import coverage_at, fetch_snapshots, take_daily_snapshot

COUNT_FIELDS = (
    "target",
    "units",
    "units_full",
    "units_partial",
    "units_never",
    "mns",
    "mns_ever_seen",
    "mns_online",
    "mns_seen_24h",
    "mns_never",
    "mns_silent",
)

# city: target, units, full, partly, units never, MNs, ever seen, online, 24 h, never, silent
CITY_COUNTS: dict[str | None, tuple[int | None, ...]] = {
    "南京市": (324, 2, 1, 1, 0, 3, 3, 2, 3, 0, 1),  # U1 NJ01 on + NJ02 off; U2 NJ03 on
    "无锡市": (959, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0),  # WX01 600 s < 900 s window
    "徐州市": (433, 1, 0, 0, 1, 1, 0, 0, 0, 1, 0),  # XZ01 never
    "常州市": (632, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0),  # CZ01 via 金坛市 -> 金坛区
    "苏州市": (4046, 1, 0, 0, 0, 1, 1, 0, 1, 0, 0),  # SZ01 180 s > 90 s; DIS01 excluded
    "南通市": (887, 1, 0, 0, 0, 1, 1, 0, 0, 0, 1),  # NT01 30 h
    "连云港市": (281, 1, 0, 0, 1, 1, 0, 0, 0, 1, 0),  # LYG01 never
    "淮安市": (319, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0),  # HA01 1200 s < 1800 s
    "盐城市": (369, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0),  # YC01 frame T-20 s (archive)
    "扬州市": (314, 1, 0, 0, 1, 1, 0, 0, 0, 1, 0),  # YZ01 first seen after T
    "镇江市": (243, 1, 0, 0, 0, 1, 1, 0, 0, 0, 1),  # ZJ01 last frame before the lookback
    "泰州市": (455, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0),  # TZ01 10 s
    "宿迁市": (344, 1, 0, 1, 0, 2, 2, 1, 2, 0, 1),  # SQ01 on, SQ02 4 h > 3 h window
    "unknown": (None, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0),  # NOCITY1
}
# sums: units 2+12+1 = 15; full 1+1+1+1+1+1+1 = 7; online 2+1+1+1+1+1+1+1 = 9; ...
PROVINCE_COUNTS = (9606, 15, 7, 2, 3, 17, 14, 9, 12, 3, 4)


def _counts(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[f] for f in COUNT_FIELDS)


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, Any]:
    assert main(argv) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


@pytest.fixture
def scenario(pg_migrated_dsn: str, tmp_path: Path) -> str:
    build_scenario(pg_migrated_dsn, tmp_path / "roster-gbk.csv")
    return pg_migrated_dsn


def test_coverage_numbers(scenario: str, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _json(
        capsys,
        ["report", "coverage", "--as-of", T_ISO, "--format", "json", "--dsn", scenario],
    )
    assert doc["as_of"] == "2024-03-15T10:00:00+08:00"
    assert doc["silent_hours"] == 2
    assert _counts(doc["province"]) == PROVINCE_COUNTS
    assert doc["province"]["unknown_mns"] == 1
    assert doc["province"]["online_rate"] == 0.5294  # 9 / 17
    assert doc["province"]["units_full_vs_target"] == 0.0007  # 7 / 9606
    assert {c["city"]: _counts(c) for c in doc["cities"]} == CITY_COUNTS
    assert [c["city"] for c in doc["cities"]][-1] == "unknown"

    nanjing = doc["cities"][0]
    assert [(c["county"], *_counts(c)[1:]) for c in nanjing["counties"]] == [
        ("鼓楼区", 1, 0, 1, 0, 2, 2, 1, 2, 0, 1),
        ("六合区", 1, 1, 0, 0, 1, 1, 1, 1, 0, 0),
    ]
    assert [(p["park"], *_counts(p)[1:]) for p in nanjing["parks"]] == [
        ("南京化学工业园区", 1, 1, 0, 0, 1, 1, 1, 1, 0, 0),
    ]
    by_city = {c["city"]: c for c in doc["cities"]}
    assert [c["county"] for c in by_city["常州市"]["counties"]] == ["金坛区"]
    assert [c["county"] for c in by_city["南通市"]["counties"]] == ["海门区"]
    assert [c["county"] for c in by_city["徐州市"]["counties"]] == ["鼓楼区"]
    assert [c["county"] for c in by_city["泰州市"]["counties"]] == ["高新区"]
    assert [p["park"] for p in by_city["无锡市"]["parks"]] == ["江阴高新技术产业开发区"]

    assert [d["mn"] for d in doc["never_connected"]] == [mn("XZ01"), mn("LYG01"), mn("YZ01")]
    assert [(d["mn"], d["last_seen"], d["silent_for_hours"]) for d in doc["silent"]] == [
        (mn("NJ02"), "2024-03-15T05:00:00+08:00", 5.0),
        (mn("NT01"), "2024-03-14T04:00:00+08:00", 30.0),
        (mn("ZJ01"), None, None),
        (mn("SQ02"), "2024-03-15T06:00:00+08:00", 4.0),
    ]
    assert doc["unknown"] == [
        {
            "mn": "UNK1",
            "first_seen": "2024-03-14T10:00:00+08:00",
            "last_seen": "2024-03-15T09:55:00+08:00",
            "peer": "10.0.0.9",
            "frames": 10,
        }
    ]


def test_coverage_of_one_city_table_and_csv(
    scenario: str, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = _json(
        capsys,
        ["report", "coverage", "--as-of", T_ISO, "--city", "宿迁", "--format", "json",
         "--dsn", scenario],
    )  # fmt: skip
    assert doc["province"] is None
    assert doc["unknown"] == []
    assert [(c["city"], _counts(c)) for c in doc["cities"]] == [("宿迁市", CITY_COUNTS["宿迁市"])]
    assert [d["mn"] for d in doc["silent"]] == [mn("SQ02")]

    assert main(["report", "coverage", "--as-of", T_ISO, "--format", "csv", "--dsn", scenario]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("level,city,county,park,target,units,units_full,")
    assert lines[1] == "province,,,,9606,15,7,2,3,17,14,9,8,12,3,4,1,0.5294,0.0007"
    assert "city,南京市,,,324,2,1,1,0,3,3,2,1,3,0,1,0,0.6667,0.0031" in lines
    assert "county,南京市,鼓楼区,,,1,0,1,0,2,2,1,1,2,0,1,0,0.5," in lines

    assert (
        main(["report", "coverage", "--as-of", T_ISO, "--city", "南京市", "--dsn", scenario]) == 0
    )
    table = capsys.readouterr().out
    assert "南京市 by county" in table
    assert mn("NJ02") in table  # the silent list


def test_progress_weekly_from_daily_snapshots(
    scenario: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """W10's figure is 2024-03-08's snapshot (as of that day's end, from the frame
    archive: only NJ01 online); W11's is today's (2024-03-15 as of T), taken on demand,
    not 2024-03-13's, which is earlier in the same week."""

    async def snapshots() -> None:
        conn = await asyncpg.connect(scenario)
        try:
            first = await take_daily_snapshot(conn, dt.date(2024, 3, 8), at_us=T)
            again = await take_daily_snapshot(conn, dt.date(2024, 3, 8), at_us=T)
            assert first == again
            await take_daily_snapshot(conn, dt.date(2024, 3, 13), at_us=T)
            with pytest.raises(ValueError, match="has not begun"):
                await take_daily_snapshot(conn, dt.date(2024, 3, 16), at_us=T)
            stored = await fetch_snapshots(conn, dt.date(2024, 3, 8), dt.date(2024, 3, 8))
            assert len(stored) == 15  # province + 13 cities + unknown
            assert sorted(stored, key=lambda r: r.city) == sorted(first, key=lambda r: r.city)
        finally:
            await conn.close()

    asyncio.run(snapshots())
    argv = ["report", "progress", "--weeks", "2", "--as-of", T_ISO, "--format", "json"]
    doc = _json(capsys, [*argv, "--dsn", scenario])
    assert doc["today"] == "2024-03-15"
    assert doc["snapshot_taken"] is True
    again = _json(capsys, [*argv, "--dsn", scenario])
    assert again["snapshot_taken"] is False
    assert again["rows"] == doc["rows"]

    fields = ("week", "snapshot_day", "target", "units", "mns", "units_full", "units_partial",
              "mns_online", "mns_seen_24h", "mns_never", "change_units_full",
              "change_units_partial", "change_mns_online")  # fmt: skip
    rows = {(r["city"], r["week"]): tuple(r[f] for f in fields) for r in doc["rows"]}
    assert len(doc["rows"]) == 15 * 2
    assert rows["南京市", "2024-W10"] == (
        "2024-W10", "2024-03-08", 324, 2, 3, 0, 1, 1, 1, 1, None, None, None,
    )  # fmt: skip
    assert rows["南京市", "2024-W11"] == (
        "2024-W11", "2024-03-15", 324, 2, 3, 1, 1, 2, 3, 0, 1, 0, 1,
    )  # fmt: skip
    assert rows["宿迁市", "2024-W10"] == (
        "2024-W10", "2024-03-08", 344, 1, 2, 0, 0, 0, 0, 2, None, None, None,
    )  # fmt: skip
    assert rows["宿迁市", "2024-W11"] == (
        "2024-W11", "2024-03-15", 344, 1, 2, 0, 1, 1, 2, 0, 0, 1, 1,
    )  # fmt: skip
    assert rows["unknown", "2024-W11"] == (
        "2024-W11", "2024-03-15", None, 1, 1, 1, 0, 1, 1, 0, 1, 0, 1,
    )  # fmt: skip
    assert rows[None, "2024-W10"] == (
        "2024-W10", "2024-03-08", 9606, 15, 17, 0, 1, 1, 1, 15, None, None, None,
    )  # fmt: skip
    assert rows[None, "2024-W11"] == (
        "2024-W11", "2024-03-15", 9606, 15, 17, 7, 2, 9, 12, 3, 7, 1, 8,
    )  # fmt: skip
    week11 = next(r for r in doc["rows"] if r["week"] == "2024-W11")
    assert (week11["week_start"], week11["week_end"]) == ("2024-03-11", "2024-03-15")


QUALITY_FIELDS = (
    "mns",
    "hours_expected",
    "hours_received",
    "transmission_rate",
    "realtime_expected",
    "realtime_received",
    "realtime_completeness",
    "values",
    "values_flagged",
    "flagged_share",
)


def test_quality_numbers(scenario: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Window 2024-03-14 (24 h, 86,400 s). Expected real-time records per MN: gas 2,880,
    water / process / no type 1,440, electricity 288, HA01 (600 s) 144, SQ02 none.
    Province: 16 MNs x 24 h = 384 hours; 6 x 2,880 + 8 x 1,440 + 288 + 144 = 29,232."""
    add_readings(scenario)
    doc = _json(
        capsys,
        ["report", "quality", "--from", "2024-03-14", "--to", "2024-03-14", "--as-of", T_ISO,
         "--format", "json", "--dsn", scenario],
    )  # fmt: skip
    assert doc["window_start"] == "2024-03-14T00:00:00+08:00"
    assert doc["window_end"] == "2024-03-15T00:00:00+08:00"
    assert set(doc["definitions"]) == {
        "transmission_rate",
        "realtime_completeness",
        "flagged_share",
        "rollup",
    }

    def q(row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(row[f] for f in QUALITY_FIELDS)

    # hours 20 + 24 + 12 = 56; real-time 100 + 1,440 (1,450 capped) + 72 = 1,612;
    # values 141 + 1,474 + 84 + 5 = 1,704, flagged 5 + 72 = 77
    assert q(doc["province"]) == (17, 384, 56, 0.1458, 29232, 1612, 0.0551, 1704, 77, 0.0452)
    cities = {c["city"]: q(c) for c in doc["cities"]}
    assert cities["南京市"] == (3, 72, 44, 0.6111, 5760, 1540, 0.2674, 1615, 5, 0.0031)
    assert cities["淮安市"] == (1, 24, 12, 0.5, 144, 72, 0.5, 84, 72, 0.8571)
    assert cities["宿迁市"] == (2, 24, 0, 0.0, 1440, 0, 0.0, 5, 0, 0.0)
    assert cities["无锡市"] == (1, 24, 0, 0.0, 288, 0, 0.0, 0, 0, None)
    assert cities["unknown"] == (1, 24, 0, 0.0, 1440, 0, 0.0, 0, 0, None)
    counties = {(c["city"], c["county"]): q(c) for c in doc["counties"]}
    assert counties["南京市", "鼓楼区"] == (2, 48, 20, 0.4167, 4320, 100, 0.0231, 141, 5, 0.0355)
    assert counties["南京市", "六合区"] == (1, 24, 24, 1.0, 1440, 1440, 1.0, 1474, 0, 0.0)
    mns = {m["mn"]: q(m) for m in doc["mns"]}
    assert mns[mn("NJ01")] == (1, 24, 20, 0.8333, 2880, 100, 0.0347, 141, 5, 0.0355)
    assert mns[mn("SQ02")] == (1, 0, 0, None, 0, 0, None, 5, 0, 0.0)
    assert "UNK1" not in mns
    assert len(mns) == 17


def test_reports_under_the_read_only_role(scenario: str) -> None:
    """hj212_reader reads everything a report needs (the archive through frame_public);
    writing a snapshot is refused as a permission error."""

    async def run() -> None:
        conn = await asyncpg.connect(scenario)
        try:
            await conn.execute("SET ROLE hj212_reader")
            report = await coverage_at(conn, as_of_us=T)
            assert report.province.mns_online == 9
            with pytest.raises(StorageError) as info:
                await take_daily_snapshot(conn, dt.date(2024, 3, 15), at_us=T)
            assert info.value.kind == "permission"
        finally:
            await conn.close()

    asyncio.run(run())
