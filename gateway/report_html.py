"""One self-contained HTML page per report, fit to attach to the weekly bulletin.

Everything is inline (CSS in a ``<style>`` element, charts as inline SVG, no script, no
font, no image); a Content-Security-Policy meta element forbids loading anything else, so
the page looks the same offline, in a mail client and on a locked-down office PC.

Every number sits in a cell that names it: rows carry ``data-level`` and ``data-city``
(and ``data-county``, ``data-park``, ``data-mn``), cells carry ``data-field`` with the JSON
field name, and chart bars carry the same names, so a reader (or a test) can find any
figure without parsing the layout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from html import escape
from typing import Any, Final

from gateway.report_rows import (
    COVERAGE_COLUMNS,
    PROGRESS_COLUMNS,
    PROVINCE_LABEL,
    QUALITY_COLUMNS,
    Column,
    group_label,
)

__all__ = ["coverage_html", "progress_html", "quality_html"]

_CSP: Final = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

_STYLE: Final = """
body{font:14px/1.5 "Noto Sans CJK SC","Microsoft YaHei","PingFang SC",sans-serif;
margin:24px;color:#1f2328;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
h3{font-size:15px;margin:18px 0 6px}
.meta{color:#57606a;margin:0 0 16px}
table{border-collapse:collapse;margin:4px 0 12px}
th,td{border:1px solid #d0d7de;padding:3px 8px;white-space:nowrap}
thead th{background:#f6f8fa;font-weight:600;font-size:12px}
tbody th{text-align:left;font-weight:600}
td{text-align:right;font-variant-numeric:tabular-nums}
td.text{text-align:left}
tr[data-level=province]{background:#eef6ff}
.neg{color:#cf222e}.pos{color:#1a7f37}
svg text{font-size:12px;fill:#1f2328}
.legend span{display:inline-block;margin-right:14px}
.sw{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}
.full{fill:#2da44e;background:#2da44e}.part{fill:#d4a72c;background:#d4a72c}
.rest{fill:#d0d7de;background:#d0d7de}.never{fill:#cf222e;background:#cf222e}
.target{stroke:#0969da;stroke-width:2}
.small{display:inline-block;vertical-align:top;margin:0 18px 12px 0}
dl{margin:0}dt{font-weight:600;margin-top:6px}dd{margin:0 0 0 16px;color:#424a53}
@media print{body{margin:8mm}h2{break-after:avoid}table{break-inside:auto}}
"""

_BAR_HEIGHT: Final = 18
_BAR_GAP: Final = 8
_LABEL_WIDTH: Final = 90
_CHART_WIDTH: Final = 520
_NOTE_WIDTH: Final = 200


def _page(title: str, meta: str, body: Iterable[str]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="zh-CN"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="meta">{escape(meta)}</p>',
        *body,
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _fmt(value: Any, rate: bool) -> str:
    if value is None:
        return "–"
    if rate:
        return f"{float(value) * 100:.1f}%"
    return str(value)


def _attrs(row: dict[str, Any]) -> str:
    out = [f'data-level="{escape(str(row.get("level", "")))}"']
    for key in ("city", "county", "park", "mn", "week"):
        v = row.get(key)
        if v is not None:
            out.append(f'data-{key}="{escape(str(v))}"')
    return " ".join(out)


def _table(
    table_id: str,
    first: str,
    rows: Iterable[dict[str, Any]],
    columns: Sequence[Column],
    *,
    label: Any = group_label,
    extra: Sequence[tuple[str, str]] = (),
) -> str:
    """A table: one header column (the group's name), ``extra`` text columns, numbers."""
    head = "".join(f"<th>{escape(h)}</th>" for h in [first, *(h for _, h in extra)])
    head += "".join(f'<th data-field="{c.key}">{escape(c.label)}</th>' for c in columns)
    lines = [f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>']
    for r in rows:
        cells = [f"<th>{escape(str(label(r)))}</th>"]
        for key, _ in extra:
            cells.append(
                f'<td class="text" data-field="{key}">{escape(str(r.get(key) or "–"))}</td>'
            )
        for c in columns:
            v = r.get(c.key)
            cls = ""
            if c.key.startswith("change_") and isinstance(v, int):
                cls = ' class="pos"' if v > 0 else ' class="neg"' if v < 0 else ""
                shown = f"{v:+d}"
            else:
                shown = _fmt(v, c.rate)
            raw = "" if v is None else escape(str(v))
            cells.append(f'<td{cls} data-field="{c.key}" data-value="{raw}">{escape(shown)}</td>')
        lines.append(f"<tr {_attrs(r)}>{''.join(cells)}</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _legend(items: Sequence[tuple[str, str]]) -> str:
    spans = "".join(f'<span><i class="sw {cls}"></i>{escape(text)}</span>' for cls, text in items)
    return f'<p class="legend">{spans}</p>'


def _svg_open(chart_id: str, n_rows: int) -> tuple[str, int]:
    width = _LABEL_WIDTH + _CHART_WIDTH + _NOTE_WIDTH
    height = n_rows * (_BAR_HEIGHT + _BAR_GAP) + _BAR_GAP
    return (
        f'<svg id="{chart_id}" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img">'
    ), height


def _bar_group(r: dict[str, Any], y: int, label: str, keys: Sequence[str]) -> list[str]:
    data = " ".join(f'data-{k.replace("_", "-")}="{escape(str(r.get(k)))}"' for k in keys)
    return [
        f'<g class="bar" {_attrs(r)} {data}>',
        f'<text x="{_LABEL_WIDTH - 6}" y="{y + _BAR_HEIGHT - 4}" '
        f'text-anchor="end">{escape(label)}</text>',
    ]


def _rect(cls: str, x: float, y: int, w: float, title: str) -> str:
    return (
        f'<rect class="{cls}" x="{x:.1f}" y="{y}" width="{w:.1f}" height="{_BAR_HEIGHT}">'
        f"<title>{escape(title)}</title></rect>"
    )


def _note(y: int, text: str) -> str:
    x = _LABEL_WIDTH + _CHART_WIDTH + 6
    return f'<text x="{x}" y="{y + _BAR_HEIGHT - 4}">{escape(text)}</text>'


def _stacked_chart(
    chart_id: str,
    rows: Sequence[dict[str, Any]],
    parts: Sequence[tuple[str, str]],
    *,
    total_key: str,
    target_key: str | None = None,
    label: Callable[[dict[str, Any]], str] = group_label,
) -> str:
    """Horizontal stacked bars, one per row: ``parts`` (field, css class) stacked, the
    rest of ``total_key`` in grey, a target tick when ``target_key`` is given; the note
    reads first part / total (target)."""
    totals = [int(r.get(total_key) or 0) for r in rows]
    targets = [int(r.get(target_key) or 0) for r in rows] if target_key else []
    scale = max([1, *totals, *targets])
    svg, _ = _svg_open(chart_id, len(rows))
    out = [svg]
    for i, r in enumerate(rows):
        y = _BAR_GAP + i * (_BAR_HEIGHT + _BAR_GAP)
        keys = [*(k for k, _ in parts), total_key, *([target_key] if target_key else [])]
        out += _bar_group(r, y, label(r), keys)
        x = float(_LABEL_WIDTH)
        used = 0
        for key, cls in parts:
            v = int(r.get(key) or 0)
            used += v
            if v:
                out.append(_rect(cls, x, y, _CHART_WIDTH * v / scale, f"{key} {v}"))
            x += _CHART_WIDTH * v / scale
        rest = max(0, totals[i] - used)
        if rest:
            out.append(_rect("rest", x, y, _CHART_WIDTH * rest / scale, f"rest {rest}"))
        note = f"{int(r.get(parts[0][0]) or 0)}/{totals[i]}"
        if targets and targets[i]:
            tx = _LABEL_WIDTH + _CHART_WIDTH * targets[i] / scale
            out.append(
                f'<line class="target" x1="{tx:.1f}" x2="{tx:.1f}" y1="{y - 2}" '
                f'y2="{y + _BAR_HEIGHT + 2}"><title>target {targets[i]}</title></line>'
            )
            note += f" (target {targets[i]})"
        out += [_note(y, note), "</g>"]
    out.append("</svg>")
    return "\n".join(out)


def _rate_chart(chart_id: str, rows: Sequence[dict[str, Any]], key: str) -> str:
    """Horizontal bars of a rate (0-1) per row, with the percentage written beside."""
    svg, _ = _svg_open(chart_id, len(rows))
    out = [svg]
    for i, r in enumerate(rows):
        y = _BAR_GAP + i * (_BAR_HEIGHT + _BAR_GAP)
        out += _bar_group(r, y, group_label(r), [key])
        v = r.get(key)
        out.append(_rect("rest", _LABEL_WIDTH, y, _CHART_WIDTH, "100%"))
        if v:
            out.append(_rect("full", _LABEL_WIDTH, y, _CHART_WIDTH * float(v), _fmt(v, True)))
        out += [_note(y, _fmt(v, True)), "</g>"]
    out.append("</svg>")
    return "\n".join(out)


def _definitions(defs: dict[str, str]) -> str:
    items = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in defs.items())
    return f'<h2>定义 Definitions</h2><dl id="definitions">{items}</dl>'


def _device_table(table_id: str, rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> str:
    if not rows:
        return f'<p id="{table_id}">none</p>'
    head = "".join(f"<th>{escape(k)}</th>" for k in keys)
    lines = [f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>']
    for r in rows:
        cells = "".join(
            f'<td class="text" data-field="{k}">{escape(_fmt(r.get(k), False))}</td>' for k in keys
        )
        lines.append(f'<tr data-mn="{escape(str(r["mn"]))}">{cells}</tr>')
    lines.append("</tbody></table>")
    return "\n".join(lines)


def coverage_html(doc: dict[str, Any]) -> str:
    groups = [*([doc["province"]] if doc["province"] else []), *doc["cities"]]
    cities = doc["cities"]
    body = [
        "<h2>单位联网 Units networked per city</h2>",
        _legend(
            [
                ("full", "全部监测点在线 fully networked"),
                ("part", "部分在线 partly"),
                ("rest", "未在线 not online"),
            ]
        ),
        _stacked_chart(
            "chart-units",
            cities,
            [("units_full", "full"), ("units_partial", "part")],
            total_key="units",
            target_key="target",
        ),
        "<h2>监测点 MNs per city</h2>",
        _legend(
            [
                ("full", "在线 online"),
                ("never", "从未联网 never connected"),
                ("rest", "离线 offline"),
            ]
        ),
        _stacked_chart(
            "chart-mns",
            cities,
            [("mns_online", "full"), ("mns_never", "never")],
            total_key="mns",
        ),
        "<h2>各市 By city</h2>",
        _table("table-cities", "城市 city", groups, COVERAGE_COLUMNS),
    ]
    for c in cities:
        if c["counties"]:
            body.append(f"<h3>{escape(c['city'])} 各县（市、区） by county</h3>")
            body.append(
                _table(
                    f"table-counties-{c['city']}", "县（市、区）", c["counties"], COVERAGE_COLUMNS
                )
            )
        if c["parks"]:
            body.append(f"<h3>{escape(c['city'])} 园区 by park</h3>")
            body.append(
                _table(f"table-parks-{c['city']}", "园区 park", c["parks"], COVERAGE_COLUMNS)
            )
    device_keys = ("mn", "unit_name", "credit_code", "city", "county", "park", "outlet_label")
    body += [
        f"<h2>应联未联 Never connected ({len(doc['never_connected'])})</h2>",
        _device_table("list-never", doc["never_connected"], device_keys),
        f"<h2>长时间无数据 Silent for more than {doc['silent_hours']} h "
        f"({len(doc['silent'])})</h2>",
        _device_table(
            "list-silent", doc["silent"], (*device_keys[:5], "last_seen", "silent_for_hours")
        ),
    ]
    if doc["province"]:
        body += [
            f"<h2>名单外监测点 MNs not in the roster ({len(doc['unknown'])})</h2>",
            _device_table(
                "list-unknown", doc["unknown"], ("mn", "first_seen", "last_seen", "peer", "frames")
            ),
        ]
    body.append(_definitions(doc["definitions"]))
    scope = doc["city_filter"] or PROVINCE_LABEL
    return _page(
        f"重点排污单位联网覆盖情况 Networking coverage — {scope}",
        f"as of {doc['as_of']} ({doc['timezone']}); silent = no frame for more than "
        f"{doc['silent_hours']} h",
        body,
    )


def progress_html(doc: dict[str, Any]) -> str:
    by_city: dict[str, list[dict[str, Any]]] = {}
    for r in doc["rows"]:
        by_city.setdefault(r["city"] or PROVINCE_LABEL, []).append(r)
    charts = []
    for city, rows in by_city.items():
        charts += [
            f'<div class="small"><h3>{escape(city)}</h3>',
            _stacked_chart(
                f"chart-{city}",
                rows,
                [("units_full", "full"), ("units_partial", "part")],
                total_key="units",
                target_key="target",
                label=lambda r: str(r["week"]),
            ),
            "</div>",
        ]
    body = [
        "<h2>各市每周联网单位 Units networked per week and city</h2>",
        _legend(
            [("full", "联网 networked"), ("part", "部分联网 partly"), ("rest", "未联网 not yet")]
        ),
        *charts,
        "<h2>明细 Table</h2>",
        _table(
            "table-progress",
            "城市 city",
            doc["rows"],
            PROGRESS_COLUMNS,
            label=lambda r: r["city"] or PROVINCE_LABEL,
        ),
        _definitions(doc["definitions"]),
    ]
    return _page(
        f"联网进度周报 Weekly networking progress — {doc['weeks']} week(s) to {doc['today']}",
        f"time zone {doc['timezone']}; each week's figures are its last daily snapshot",
        body,
    )


def quality_html(doc: dict[str, Any]) -> str:
    groups = [*([doc["province"]] if doc["province"] else []), *doc["cities"]]
    body = [
        "<h2>各市传输率 Transmission rate per city</h2>",
        _rate_chart("chart-transmission", doc["cities"], "transmission_rate"),
        "<h2>各市实时数据完整率 Real-time completeness per city</h2>",
        _rate_chart("chart-completeness", doc["cities"], "realtime_completeness"),
        "<h2>各市 By city</h2>",
        _table("table-cities", "城市 city", groups, QUALITY_COLUMNS),
        "<h2>各县（市、区） By county</h2>",
        _table(
            "table-counties",
            "县（市、区）",
            doc["counties"],
            QUALITY_COLUMNS,
            extra=[("city", "城市 city")],
        ),
        "<h2>监测点 By MN</h2>",
        _table(
            "table-mns",
            "MN",
            doc["mns"],
            QUALITY_COLUMNS[1:],
            extra=[("unit_name", "单位 unit"), ("city", "城市 city"), ("county", "县 county")],
        ),
        _definitions(doc["definitions"]),
    ]
    return _page(
        f"数据质量 Data quality — {doc['from']} to {doc['to']}",
        f"window {doc['window_start']} to {doc['window_end']} ({doc['timezone']})",
        body,
    )
