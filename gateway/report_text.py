"""Plain-text table and CSV renderers of the report documents (gateway.report_rows).

Tables align Chinese names by display width (a CJK character takes two columns). CSV is
one flat table per report with a ``level`` column (province, city, county, park, mn), so
a spreadsheet can filter it; the lists of devices are in the JSON and HTML formats.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

from gateway.report_rows import (
    COVERAGE_COLUMNS,
    PROGRESS_COLUMNS,
    QUALITY_COLUMNS,
    Column,
    group_label,
)

__all__ = [
    "coverage_csv",
    "coverage_table",
    "progress_csv",
    "progress_table",
    "quality_csv",
    "quality_table",
]


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _cell(value: Any, rate: bool = False) -> str:
    if value is None:
        return "-"
    if rate and isinstance(value, float | int):
        return f"{value * 100:.1f}"
    return str(value)


def _signed(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:+d}" if isinstance(value, int) else str(value)


def _table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    body = [list(r) for r in rows]
    widths = [_width(h) for h in head]
    for r in body:
        widths = [max(w, _width(c)) for w, c in zip(widths, r, strict=True)]

    def line(cells: Sequence[str]) -> str:
        first = cells[0] + " " * (widths[0] - _width(cells[0]))
        rest = [" " * (w - _width(c)) + c for w, c in zip(widths[1:], cells[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    return [line(head), *(line(r) for r in body)]


def _rows(docs: Iterable[dict[str, Any]], columns: Sequence[Column]) -> list[list[str]]:
    out: list[list[str]] = []
    for d in docs:
        cells = [group_label(d)]
        for c in columns:
            v = d.get(c.key)
            cells.append(_signed(v) if c.key.startswith("change_") else _cell(v, c.rate))
        out.append(cells)
    return out


def coverage_table(doc: dict[str, Any], *, details: bool) -> str:
    heads = [c.short for c in COVERAGE_COLUMNS]
    lines = [
        f"Coverage as of {doc['as_of']} ({doc['timezone']}); silent = no frame for more "
        f"than {doc['silent_hours']} h; online% = online MNs / roster MNs",
        "",
    ]
    groups = [*([doc["province"]] if doc["province"] else []), *doc["cities"]]
    lines += _table(["city", *heads], _rows(groups, COVERAGE_COLUMNS))
    if doc["province"]:
        lines.append("")
        lines.append(f"MNs sending data that are not in the roster (24 h): {len(doc['unknown'])}")
    if details:
        for city in doc["cities"]:
            if city["counties"]:
                lines += ["", f"{city['city']} by county"]
                lines += _table(["county", *heads], _rows(city["counties"], COVERAGE_COLUMNS))
            if city["parks"]:
                lines += ["", f"{city['city']} by park"]
                lines += _table(["park", *heads], _rows(city["parks"], COVERAGE_COLUMNS))
        lines += _device_lists(doc)
    else:
        lines += [
            "",
            f"never connected: {len(doc['never_connected'])} MNs; silent: "
            f"{len(doc['silent'])} MNs (--details or --city lists them; JSON has every list)",
        ]
    return "\n".join(lines) + "\n"


def _device_lists(doc: dict[str, Any]) -> list[str]:
    lines = ["", f"never connected ({len(doc['never_connected'])}):"]
    lines += _table(
        ["MN", "unit", "credit code", "city", "county", "type"],
        (
            [
                d["mn"],
                d["unit_name"] or "-",
                d["credit_code"] or "-",
                d["city"] or "-",
                d["county"] or "-",
                d["outlet_label"] or "-",
            ]
            for d in doc["never_connected"]
        ),
    )
    lines += ["", f"silent for more than {doc['silent_hours']} h ({len(doc['silent'])}):"]
    lines += _table(
        ["MN", "unit", "city", "county", "last seen", "hours"],
        (
            [
                d["mn"],
                d["unit_name"] or "-",
                d["city"] or "-",
                d["county"] or "-",
                d["last_seen"] or "before the lookback",
                _cell(d["silent_for_hours"]),
            ]
            for d in doc["silent"]
        ),
    )
    if doc["province"]:
        lines += ["", f"not in the roster, sending in the last 24 h ({len(doc['unknown'])}):"]
        lines += _table(
            ["MN", "first seen", "last seen", "peer", "frames"],
            (
                [u["mn"], u["first_seen"], u["last_seen"], u["peer"] or "-", str(u["frames"])]
                for u in doc["unknown"]
            ),
        )
    return lines


def _csv(fields: Sequence[str], rows: Iterable[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    return buf.getvalue()


_COVERAGE_CSV_FIELDS = (
    "level",
    "city",
    "county",
    "park",
    "target",
    "units",
    "units_full",
    "units_partial",
    "units_never",
    "mns",
    "mns_ever_seen",
    "mns_online",
    "mns_offline",
    "mns_seen_24h",
    "mns_never",
    "mns_silent",
    "unknown_mns",
    "online_rate",
    "units_full_vs_target",
)


def coverage_csv(doc: dict[str, Any]) -> str:
    rows: list[dict[str, Any]] = [doc["province"]] if doc["province"] else []
    for city in doc["cities"]:
        rows += [city, *city["counties"], *city["parks"]]
    return _csv(_COVERAGE_CSV_FIELDS, rows)


def progress_table(doc: dict[str, Any]) -> str:
    lines = [
        f"Weekly networking progress, {doc['weeks']} week(s) to {doc['today']} "
        f"({doc['timezone']}); networked = every MN of the unit online at the snapshot",
        "",
    ]
    lines += _table(
        ["city", *(c.short for c in PROGRESS_COLUMNS)], _rows(doc["rows"], PROGRESS_COLUMNS)
    )
    return "\n".join(lines) + "\n"


_PROGRESS_CSV_FIELDS = (
    "level",
    "city",
    "week",
    "week_start",
    "week_end",
    "snapshot_day",
    "target",
    "units",
    "mns",
    "units_full",
    "change_units_full",
    "units_partial",
    "change_units_partial",
    "mns_online",
    "change_mns_online",
    "mns_seen_24h",
    "mns_never",
)


def progress_csv(doc: dict[str, Any]) -> str:
    return _csv(_PROGRESS_CSV_FIELDS, doc["rows"])


def quality_table(doc: dict[str, Any], *, details: bool) -> str:
    heads = [c.short for c in QUALITY_COLUMNS]
    lines = [
        f"Data quality {doc['from']} .. {doc['to']} (window {doc['window_start']} to "
        f"{doc['window_end']}, {doc['timezone']})",
        *(f"  {text}" for text in doc["definitions"].values()),
        "",
    ]
    groups = [*([doc["province"]] if doc["province"] else []), *doc["cities"]]
    lines += _table(["city", *heads], _rows(groups, QUALITY_COLUMNS))
    lines += ["", "by county"]
    lines += _table(
        ["city", "county", *heads],
        (
            [c["city"] or "-", *r]
            for c, r in zip(doc["counties"], _rows(doc["counties"], QUALITY_COLUMNS), strict=True)
        ),
    )
    if details:
        lines += ["", "by MN"]
        lines += _table(
            ["MN", "unit", "county", *heads],
            (
                [m["mn"], m["unit_name"] or "-", m["county"] or "-", *r[1:]]
                for m, r in zip(doc["mns"], _rows(doc["mns"], QUALITY_COLUMNS), strict=True)
            ),
        )
    return "\n".join(lines) + "\n"


_QUALITY_CSV_FIELDS = (
    "level",
    "city",
    "county",
    "mn",
    "unit_name",
    "outlet_type",
    "rtd_interval_s",
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


def quality_csv(doc: dict[str, Any]) -> str:
    rows = [*([doc["province"]] if doc["province"] else []), *doc["cities"]]
    return _csv(_QUALITY_CSV_FIELDS, [*rows, *doc["counties"], *doc["mns"]])
