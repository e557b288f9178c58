"""Report arithmetic without a database: online windows, units across groups, weeks,
and the report command's usage errors."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from rosterkit import main

from gateway.cmd_report import parse_time_us
from storage.roster_model import RosterDevice, online_window_s
from storage.roster_ref import load_reference
from storage.roster_report import (
    PROVINCE,
    Sighting,
    SnapshotRow,
    compute_coverage,
    compute_progress,
    day_bounds_us,
)

S = 1_000_000
T = 1_710_468_000 * S  # 2024-03-15 02:00:00 UTC


def dev(mn: str, **kw: object) -> RosterDevice:
    base: dict[str, object] = {
        "unit_name": "u",
        "credit_code": "C1",
        "city": "南京市",
        "county": "鼓楼区",
        "park": None,
        "outlet_type": "water",
    }
    base.update(kw)
    return RosterDevice(mn=mn, **base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "window"),
    [
        ({"outlet_type": "gas"}, 90),
        ({"outlet_type": "water"}, 180),
        ({"outlet_type": "wastewater"}, 180),
        ({"outlet_type": "flue gas"}, 90),
        ({"outlet_type": "process"}, 180),
        ({"outlet_type": "electricity"}, 900),
        ({"outlet_type": None}, 180),
        ({"rtd_interval_s": 10}, 60),  # 30 s, raised to the one-minute floor
        ({"rtd_interval_s": 0}, 10_800),  # no real-time data: hourly
        ({"rtd_interval_s": 0, "minute_interval_s": 600}, 1_800),
        ({"online_after_s": 7_200}, 7_200),
    ],
)
def test_online_windows(kw: dict[str, object], window: int) -> None:
    assert online_window_s(dev("M", **kw)) == window


def test_units_in_two_counties_and_window_edges() -> None:
    """Unit C1 has one MN in 鼓楼区 (online, exactly at its 180 s window) and one in 玄武区
    (181 s: offline): in each county it is one unit, fully resp. not networked; in the
    city it is partly networked. C2's only MN was never seen."""
    roster = [
        dev("A"),
        dev("B", county="玄武区"),
        dev("C", credit_code="C2"),
    ]
    seen = [Sighting("A", T - 100 * S, T - 180 * S), Sighting("B", T - 100 * S, T - 181 * S)]
    report = compute_coverage(roster, seen, load_reference(), as_of_us=T, city="南京市")
    city = report.cities[0]
    c = city.counts
    assert (c.units, c.units_full, c.units_partial, c.units_never) == (2, 0, 1, 1)
    assert (c.mns, c.mns_online, c.mns_ever_seen, c.mns_never) == (3, 1, 2, 1)
    by_county = {x.county: x for x in city.counties}
    assert list(by_county) == ["玄武区", "鼓楼区"]  # the plan's order
    assert (by_county["鼓楼区"].units, by_county["鼓楼区"].units_full) == (2, 1)
    assert (by_county["玄武区"].units, by_county["玄武区"].units_full) == (1, 0)
    assert report.province.target is None  # a one-city report has no province target


def _snap(day: dt.date, city: str, full: int) -> SnapshotRow:
    return SnapshotRow(day, city, 0, None, 5, full, 0, 0, 6, 0, full, 0, 0, 0, 2, 0)


def test_progress_weeks_gaps_and_year_boundary() -> None:
    """Weeks run Monday to Sunday; a week without a snapshot has no figures and breaks
    the change; ISO week 2025-W01 starts on 2024-12-30."""
    snaps = [
        _snap(dt.date(2024, 12, 20), "南京市", 1),  # 2024-W51 (Friday)
        _snap(dt.date(2024, 12, 22), "南京市", 2),  # 2024-W51 (Sunday, its last day)
        _snap(dt.date(2025, 1, 2), "南京市", 4),  # 2025-W01; 2024-W52 has none
        _snap(dt.date(2025, 1, 7), "南京市", 5),  # 2025-W02
    ]
    report = compute_progress(snaps, load_reference(), today=dt.date(2025, 1, 8), weeks=3)
    rows = [
        (r.week, r.snapshot_day, r.units_full, r.change_units_full)
        for r in report.rows
        if r.city == "南京市"
    ]
    assert rows == [
        ("2024-W52", None, None, None),
        ("2025-W01", dt.date(2025, 1, 2), 4, None),
        ("2025-W02", dt.date(2025, 1, 7), 5, 1),
    ]
    assert {r.city for r in report.rows} == {*load_reference().cities, PROVINCE}


def test_times_and_days() -> None:
    tz = ZoneInfo("Asia/Shanghai")
    assert parse_time_us("2024-03-15T10:00", tz) == T
    assert parse_time_us("2024-03-15 10:00:00+08:00", tz) == T
    assert parse_time_us("2024-03-15T02:00:00Z", tz) == T
    assert day_bounds_us(dt.date(2024, 3, 15), "Asia/Shanghai") == (
        T - 10 * 3600 * S,
        T + 14 * 3600 * S,
    )


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["report", "coverage", "--as-of", "yesterday"], "not an ISO 8601 time"),
        (["report", "coverage", "--city", "上海市"], "is not one of"),
        (["report", "coverage", "--silent-hours", "0"], "--silent-hours must be"),
        (["report", "progress", "--weeks", "0"], "--weeks must be 1-104"),
        (["report", "quality", "--from", "2024-03-02", "--to", "2024-03-01"], "before --from"),
        (["report", "quality", "--from", "2024-03-01", "--to", "x"], "want dates"),
    ],
)
def test_report_usage_errors(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # usage is checked before connecting: the DSN points nowhere
    assert main([*argv, "--dsn", "postgresql://postgres@127.0.0.1:1/none"]) == 2
    assert words in capsys.readouterr().err


def test_report_needs_postgresql_and_a_reachable_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HJ212_STORAGE__DSN", raising=False)
    assert main(["report", "coverage"]) == 2
    assert "reports read PostgreSQL" in capsys.readouterr().err
    assert main(["report", "coverage", "--dsn", "postgresql://postgres@127.0.0.1:1/none"]) == 1
    assert "database failed" in capsys.readouterr().err
    assert main(["report"]) == 2
