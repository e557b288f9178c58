"""Reports as plain documents: what JSON prints, and what the table, CSV and HTML
renderers lay out. Field names here are the documented interface (README, "Report JSON").

Times are ISO 8601 in the report's time zone with its offset (``2024-03-15T10:00:00+08:00``);
rates are fractions 0-1 rounded to 4 places, or null when the denominator is 0.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Final
from zoneinfo import ZoneInfo

from storage.roster_model import OUTLET_LABELS, outlet_type
from storage.roster_report import (
    PROVINCE,
    CoverageCounts,
    CoverageReport,
    DeviceState,
    ProgressReport,
    QualityReport,
    QualityRow,
    UnknownMn,
)

__all__ = [
    "COVERAGE_COLUMNS",
    "COVERAGE_DEFINITIONS",
    "PROGRESS_COLUMNS",
    "PROGRESS_DEFINITIONS",
    "QUALITY_COLUMNS",
    "Column",
    "coverage_doc",
    "iso",
    "progress_doc",
    "quality_doc",
]

RATE_DIGITS: Final = 4
PROVINCE_LABEL: Final = "全省"


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    """Field of the row document."""
    short: str
    """Plain-text and CSV-free header (table format)."""
    label: str
    """HTML header: Chinese first, as bulletins are written."""
    rate: bool = False


COVERAGE_COLUMNS: Final = (
    Column("target", "target", "计划数 target"),
    Column("units", "units", "名单单位 units"),
    Column("units_full", "full", "全部在线 fully networked"),
    Column("units_partial", "partly", "部分在线 partly"),
    Column("units_never", "u.never", "从未联网单位 units never seen"),
    Column("mns", "MNs", "监测点 MNs"),
    Column("mns_ever_seen", "ever", "曾联网 ever seen"),
    Column("mns_online", "online", "在线 online"),
    Column("mns_seen_24h", "24h", "24小时内 seen 24 h"),
    Column("mns_never", "never", "从未联网 never"),
    Column("mns_silent", "silent", "长时间无数据 silent"),
    Column("online_rate", "online%", "在线率 online rate", rate=True),
)

COVERAGE_DEFINITIONS: Final = {
    "units": "units (unified social credit codes) with at least one MN in the group",
    "units_full": "units all of whose MNs in the group are online (fully networked)",
    "units_partial": "units with some but not all MNs online (partly networked)",
    "units_never": "units none of whose MNs in the group was ever seen",
    "mns": "monitoring points (MNs) of the roster: enabled hj212.device rows",
    "mns_ever_seen": "MNs whose first frame arrived at or before the as-of time",
    "mns_online": "MNs whose last frame is within their online window before the as-of "
    "time (3 x the expected interval unless the roster sets online_after_s)",
    "mns_seen_24h": "MNs with a frame in the 24 hours before the as-of time",
    "mns_never": "MNs never seen: in the roster (should be networked) but never connected",
    "mns_silent": "MNs seen before but with no frame for more than silent_hours hours",
    "unknown_mns": "MNs not in the roster that sent frames in the 24 hours before the as-of time",
    "target": "the plan's (2021) count of units per city that must monitor automatically",
}

PROGRESS_COLUMNS: Final = (
    Column("week", "week", "周 week"),
    Column("snapshot_day", "day", "快照日 snapshot"),
    Column("target", "target", "计划数 target"),
    Column("units", "units", "名单单位 units"),
    Column("units_full", "full", "联网单位 units networked"),
    Column("change_units_full", "Δfull", "较上周 change"),
    Column("units_partial", "partly", "部分联网 partly"),
    Column("change_units_partial", "Δpartly", "较上周 change"),
    Column("mns", "MNs", "监测点 MNs"),
    Column("mns_online", "online", "在线监测点 MNs online"),
    Column("change_mns_online", "Δonline", "较上周 change"),
)

PROGRESS_DEFINITIONS: Final = {
    "week": "ISO week (Monday to Sunday, local time); the current week ends today",
    "snapshot_day": "the day whose end-of-day snapshot stands for the week (its last one)",
    "units_full": "units with every MN online at the snapshot time (networked)",
    "units_partial": "units with some, not all, MNs online at the snapshot time",
    "mns_online": "MNs online at the snapshot time",
    "change_*": "this week's value minus the previous week's (null when either is missing)",
}

QUALITY_COLUMNS: Final = (
    Column("mns", "MNs", "监测点 MNs"),
    Column("hours_expected", "h.exp", "应传小时 hours expected"),
    Column("hours_received", "h.recv", "实传小时 hours received"),
    Column("transmission_rate", "trans%", "传输率 transmission rate", rate=True),
    Column("realtime_expected", "rt.exp", "应传实时 real-time expected"),
    Column("realtime_received", "rt.recv", "实传实时 real-time received"),
    Column("realtime_completeness", "rt%", "实时完整率 completeness", rate=True),
    Column("values", "values", "数据值 values"),
    Column("values_flagged", "flagged", "非N标记 flagged"),
    Column("flagged_share", "flag%", "标记占比 flagged share", rate=True),
)


def iso(us: int, tz: ZoneInfo) -> str:
    t = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)
    return t.astimezone(tz).replace(microsecond=0).isoformat()


def _rate(value: float | None) -> float | None:
    return None if value is None else round(value, RATE_DIGITS)


def _counts(c: CoverageCounts) -> dict[str, Any]:
    return {
        "level": c.level,
        "city": c.city,
        "county": c.county,
        "park": c.park,
        "target": c.target,
        "units": c.units,
        "units_full": c.units_full,
        "units_partial": c.units_partial,
        "units_never": c.units_never,
        "mns": c.mns,
        "mns_ever_seen": c.mns_ever_seen,
        "mns_online": c.mns_online,
        "mns_offline": c.mns_offline,
        "mns_seen_24h": c.mns_seen_24h,
        "mns_never": c.mns_never,
        "mns_silent": c.mns_silent,
        "unknown_mns": c.unknown_mns,
        "online_rate": _rate(c.online_rate),
        "units_full_vs_target": _rate(c.units_vs_target),
    }


def _device(s: DeviceState, tz: ZoneInfo, as_of_us: int) -> dict[str, Any]:
    d = s.device
    kind = outlet_type(d.outlet_type or "")
    out: dict[str, Any] = {
        "mn": d.mn,
        "unit_name": d.unit_name,
        "credit_code": d.credit_code,
        "city": d.city,
        "county": d.county,
        "park": d.park,
        "outlet_type": kind or d.outlet_type,
        "outlet_label": OUTLET_LABELS.get(kind or "", d.outlet_type),
        "status": s.status,
    }
    if s.ever_seen:
        out["last_seen"] = None if s.last_seen_us is None else iso(s.last_seen_us, tz)
        out["silent_for_hours"] = (
            None if s.last_seen_us is None else round((as_of_us - s.last_seen_us) / 3.6e9, 1)
        )
    return out


def _unknown(u: UnknownMn, tz: ZoneInfo) -> dict[str, Any]:
    return {
        "mn": u.mn,
        "first_seen": iso(u.first_seen_us, tz),
        "last_seen": iso(u.last_seen_us, tz),
        "peer": u.peer,
        "frames": u.frames,
    }


def coverage_doc(report: CoverageReport, tz: ZoneInfo) -> dict[str, Any]:
    return {
        "report": "coverage",
        "as_of": iso(report.as_of_us, tz),
        "timezone": tz.key,
        "city_filter": report.city_filter,
        "silent_hours": report.silent_hours,
        "definitions": COVERAGE_DEFINITIONS,
        "province": None if report.city_filter else _counts(report.province),
        "cities": [
            {
                **_counts(cc.counts),
                "counties": [_counts(c) for c in cc.counties],
                "parks": [_counts(p) for p in cc.parks],
            }
            for cc in report.cities
        ],
        "never_connected": [_device(s, tz, report.as_of_us) for s in report.never_connected],
        "silent": [_device(s, tz, report.as_of_us) for s in report.silent],
        "unknown": [_unknown(u, tz) for u in report.unknown],
    }


def _day(d: dt.date | None) -> str | None:
    return None if d is None else d.isoformat()


def progress_doc(report: ProgressReport, tz: ZoneInfo, *, snapshot_taken: bool) -> dict[str, Any]:
    rows: list[dict[str, Any]] = [
        {
            "level": "province" if r.city == PROVINCE else "city",
            "city": None if r.city == PROVINCE else r.city,
            "week": r.week,
            "week_start": _day(r.week_start),
            "week_end": _day(r.week_end),
            "snapshot_day": _day(r.snapshot_day),
            "target": r.target,
            "units": r.units,
            "mns": r.mns,
            "units_full": r.units_full,
            "units_partial": r.units_partial,
            "mns_online": r.mns_online,
            "mns_seen_24h": r.mns_seen_24h,
            "mns_never": r.mns_never,
            "change_units_full": r.change_units_full,
            "change_units_partial": r.change_units_partial,
            "change_mns_online": r.change_mns_online,
        }
        for r in report.rows
    ]
    return {
        "report": "progress",
        "today": report.today.isoformat(),
        "timezone": tz.key,
        "weeks": report.weeks,
        "snapshot_taken": snapshot_taken,
        "definitions": PROGRESS_DEFINITIONS,
        "rows": rows,
    }


def _quality_row(r: QualityRow) -> dict[str, Any]:
    out: dict[str, Any] = {"level": r.level, "city": r.city, "county": r.county}
    if r.level == "mn":
        kind = outlet_type(r.outlet_type or "")
        out |= {
            "mn": r.mn,
            "unit_name": r.unit_name,
            "outlet_type": kind or r.outlet_type,
            "rtd_interval_s": r.rtd_interval_s,
        }
    return out | {
        "mns": r.mns,
        "hours_expected": r.hours_expected,
        "hours_received": r.hours_received,
        "transmission_rate": _rate(r.transmission_rate),
        "realtime_expected": r.realtime_expected,
        "realtime_received": r.realtime_received,
        "realtime_completeness": _rate(r.realtime_completeness),
        "values": r.values,
        "values_flagged": r.values_flagged,
        "flagged_share": _rate(r.flagged_share),
    }


def quality_doc(
    report: QualityReport, tz: ZoneInfo, *, first_day: dt.date, last_day: dt.date
) -> dict[str, Any]:
    return {
        "report": "quality",
        "from": first_day.isoformat(),
        "to": last_day.isoformat(),
        "window_start": iso(report.start_us, tz),
        "window_end": iso(report.end_us, tz),
        "timezone": tz.key,
        "city_filter": report.city_filter,
        "definitions": dict(report.definitions),
        "province": None if report.city_filter else _quality_row(report.province),
        "cities": [_quality_row(r) for r in report.cities],
        "counties": [_quality_row(r) for r in report.counties],
        "mns": [_quality_row(r) for r in report.mns],
    }


def group_label(row: dict[str, Any]) -> str:
    """The name a row is shown under: province, city, county or park."""
    level = row.get("level")
    if level == "province":
        return PROVINCE_LABEL
    if level == "county":
        return row.get("county") or "(county not set)"
    if level == "park":
        return str(row.get("park"))
    if level == "mn":
        return str(row.get("mn"))
    return str(row.get("city"))
