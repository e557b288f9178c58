"""Read a networking roster (the plan's attachment 3 layout) into checked ``RosterEntry``s.

Layout: the attachment's Chinese headers (序号, 排污单位名称, 所属县（市、区）, 统一社会信用代码,
排污许可证编码, 行业类别, 是否与市级平台联网, 是否与省级平台联网, 监控内容, 备注) plus what the
gateway needs (MN, 排口类型, 所属园区, 所属设区市, optional intervals); English aliases are
accepted for every column (``HEADER_ALIASES``). Files come from Excel on Chinese Windows,
so UTF-8 (with or without BOM), UTF-16 with BOM and GBK (read as GB 18030, its superset)
are accepted, with comma, tab or semicolon separators. A title row above the header
(附件3 ...) is skipped.

Checks per row; every failing row is reported with its line number (the file's physical
line, the header being line 1 when it is the first) and every reason, and the good rows
are kept:

- MN present, at most ``MN_MAX_LENGTH`` letters/digits, not already on an earlier line;
- unit name and credit code present; credit code valid (GB 32100 check character);
- permit number, when given, of that credit code (HJ 608: credit code + 3 digits + letter);
- city: the city column, else the ``city`` argument (``--city``), else the county when its
  name is unique in the province (鼓楼区 is not); the county must lie in that city;
- outlet type one of 废水/废气/工况/用电 (or inferred from 监控内容 starting with 废水/废气);
- intervals whole seconds within bounds.

Warnings (the row is still imported): a park not in the plan's list or listed under
another city, a yes/no cell that is neither, a city column that differs from ``--city``,
columns that are not recognised.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from storage.roster_codes import credit_code_problem, permit_no_problem
from storage.roster_model import RosterEntry, outlet_type
from storage.roster_ref import CountyError, Reference, normalise_text

__all__ = [
    "HEADER_ALIASES",
    "MAX_ROSTER_ROWS",
    "MN_MAX_LENGTH",
    "RosterFileError",
    "RosterParse",
    "RowProblem",
    "decode_roster",
    "parse_roster",
]

MAX_ROSTER_ROWS: Final = 100_000
"""Data rows read from one file at most: the province has ~12,000 MNs; a file eight times
larger is a mistake (a log pasted into a roster), refused before it fills memory."""
MAX_ROSTER_BYTES: Final = 64 * 1024 * 1024
"""A 100,000-row roster with long content cells is ~30 MB."""
MN_MAX_LENGTH: Final = 24
"""HJ 212-2017 MN: 24 characters (the 2005 edition used 14)."""
HEADER_SEARCH_ROWS: Final = 10
"""Rows scanned for the header (title and note rows above it are common)."""
MIN_HEADER_MATCHES: Final = 3
MAX_INTERVAL_S: Final = 86_400
MAX_CELL_CHARS: Final = 4_000
"""Cells longer than this are cut (monitored-content text runs to a few hundred)."""

_MN_RE: Final = re.compile(r"^[0-9A-Za-z]+$")

_Bad: TypeAlias = Callable[[str, str], None]
_Warn: TypeAlias = Callable[[str], None]

# Field -> header spellings (compared after NFKC, without spaces, lower case, without
# "_" and "-").
HEADER_ALIASES: Final[dict[str, tuple[str, ...]]] = {
    "seq": ("序号", "seq", "no", "no.", "index", "number"),
    "unit_name": ("排污单位名称", "单位名称", "企业名称", "unitname", "unit", "company", "name"),
    "city": ("所属设区市", "设区市", "所属市", "所在市", "城市", "市", "city"),
    "county": (
        "所属县(市、区)",
        "所属县(市,区)",
        "所属县(区、市)",
        "县(市、区)",
        "所属县区",
        "所属区县",
        "区县",
        "县区",
        "county",
        "district",
    ),
    "credit_code": (
        "统一社会信用代码",
        "社会信用代码",
        "信用代码",
        "creditcode",
        "uscc",
        "unifiedsocialcreditcode",
    ),
    "permit_no": (
        "排污许可证编码",
        "排污许可证编号",
        "排污许可证号",
        "许可证编号",
        "许可证编码",
        "permitno",
        "permit",
        "permitnumber",
    ),
    "industry": ("行业类别", "行业", "industry"),
    "networked_city": (
        "是否与市级平台联网",
        "与市级平台联网",
        "市级联网",
        "networkedcity",
        "cityplatform",
    ),
    "networked_province": (
        "是否与省级平台联网",
        "与省级平台联网",
        "省级联网",
        "networkedprovince",
        "provinceplatform",
    ),
    "monitored_content": ("监控内容", "监测内容", "monitoredcontent", "content", "monitoring"),
    "remark": ("备注", "remark", "remarks", "note", "notes"),
    "mn": ("mn", "mn号", "mn码", "数采仪mn", "数采仪mn号", "设备mn", "监测点mn"),
    "outlet_type": (
        "排口类型",
        "排放口类型",
        "监测类型",
        "监控类型",
        "outlettype",
        "outlet",
        "type",
    ),
    "park": ("所属园区", "园区", "工业园区", "park"),
    "rtd_interval_s": (
        "实时数据间隔(秒)",
        "实时数据间隔",
        "实时间隔(秒)",
        "rtdintervals",
        "rtdinterval",
        "realtimeintervals",
    ),
    "minute_interval_s": (
        "分钟数据间隔(秒)",
        "分钟数据间隔",
        "minuteintervals",
        "minuteinterval",
    ),
    "online_after_s": (
        "离线判定(秒)",
        "离线判定时间(秒)",
        "掉线判定(秒)",
        "onlineafters",
        "offlineafters",
    ),
}
REQUIRED_COLUMNS: Final = ("mn", "unit_name", "credit_code", "county")

_TRUE: Final = frozenset(("是", "已联网", "联网", "y", "yes", "true", "1", "√", "✓", "✔"))
_FALSE: Final = frozenset(("否", "未联网", "不", "n", "no", "false", "0", "×", "✗", "✘"))


def _header_key(text: str) -> str:
    return normalise_text(text).lower().replace("_", "").replace("-", "")


_FIELD_BY_HEADER: Final = {
    _header_key(alias): name for name, aliases in HEADER_ALIASES.items() for alias in aliases
}


class RosterFileError(ValueError):
    """The file as a whole cannot be read (encoding, no header, required columns, size)."""


@dataclass(frozen=True, slots=True)
class RowProblem:
    """An invalid row: not imported."""

    line: int
    mn: str | None
    unit_name: str | None
    codes: tuple[str, ...]
    """Closed set: missing_mn, bad_mn, duplicate_mn, missing_unit_name, missing_credit_code,
    bad_credit_code, permit_mismatch, bad_permit_no, unknown_city, missing_county,
    unknown_county, ambiguous_county, county_not_in_city, missing_outlet_type,
    bad_outlet_type, bad_interval."""
    reasons: tuple[str, ...]

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


@dataclass(slots=True)
class RosterParse:
    entries: list[RosterEntry] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)
    warnings: list[tuple[int, str]] = field(default_factory=list)
    """(line, message); line 0 for the file as a whole."""
    encoding: str = ""
    columns: dict[str, str] = field(default_factory=dict)
    """Field -> the header text it was read from."""
    ignored_columns: list[str] = field(default_factory=list)
    rows: int = 0
    """Data rows read (blank rows not counted)."""


def decode_roster(data: bytes) -> tuple[str, str]:
    """(text, encoding name): UTF-8 (BOM optional), UTF-16 with BOM, else GB 18030 (GBK)."""
    if data.startswith(codecs.BOM_UTF8):
        try:
            return data[len(codecs.BOM_UTF8) :].decode("utf-8"), "utf-8-sig"
        except UnicodeDecodeError as exc:
            raise RosterFileError(f"file starts with a UTF-8 BOM but is not UTF-8: {exc}") from exc
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError as exc:
            raise RosterFileError(f"file is not valid UTF-16: {exc}") from exc
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("gb18030"), "gbk"
    except UnicodeDecodeError as exc:
        raise RosterFileError("file is neither UTF-8 nor GBK text") from exc


def _delimiter(text: str) -> str:
    head = text[:4096]
    counts = {d: head.count(d) for d in (",", "\t", ";")}
    return max(counts, key=lambda d: counts[d]) if any(counts.values()) else ","


def _find_header(rows: list[tuple[int, list[str]]]) -> int:
    for i, (_, cells) in enumerate(rows[:HEADER_SEARCH_ROWS]):
        fields = {_FIELD_BY_HEADER.get(_header_key(c)) for c in cells}
        fields.discard(None)
        if "mn" in fields and len(fields) >= MIN_HEADER_MATCHES:
            return i
    raise RosterFileError(
        f"no header row with an MN column among the first {HEADER_SEARCH_ROWS} rows "
        "(expected the plan's attachment 3 headers, e.g. 排污单位名称, 所属县（市、区）, "
        "统一社会信用代码, MN, 排口类型)"
    )


def _read_rows(text: str) -> list[tuple[int, list[str]]]:
    """(first physical line, cells) of every record."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text))
    out: list[tuple[int, list[str]]] = []
    line = 1
    try:
        for cells in reader:
            out.append((line, cells))
            line = reader.line_num + 1
            if len(out) > MAX_ROSTER_ROWS + HEADER_SEARCH_ROWS:
                raise RosterFileError(f"more than {MAX_ROSTER_ROWS} rows")
    except csv.Error as exc:
        raise RosterFileError(f"line {line}: {exc}") from exc
    return out


class _RowChecker:
    """Checks one data row at a time; remembers MNs for the duplicate check."""

    def __init__(self, ref: Reference, city: str | None, result: RosterParse) -> None:
        self.ref = ref
        self.city = city
        self.result = result
        self.first_line_of_mn: dict[str, int] = {}

    def check(self, line: int, cell: dict[str, str]) -> None:
        codes: list[str] = []
        reasons: list[str] = []

        def bad(code: str, reason: str) -> None:
            codes.append(code)
            reasons.append(reason)

        def warn(message: str) -> None:
            self.result.warnings.append((line, message))

        mn = cell.get("mn", "").strip()
        if not mn:
            bad("missing_mn", "MN is empty")
        elif len(mn) > MN_MAX_LENGTH or not _MN_RE.match(mn):
            bad("bad_mn", f"MN {mn!r} is not 1-{MN_MAX_LENGTH} letters and digits")
        if mn:
            first = self.first_line_of_mn.setdefault(mn, line)
            if first != line:
                bad("duplicate_mn", f"MN {mn} is already on line {first}")

        unit_name = " ".join(cell.get("unit_name", "").split())
        if not unit_name:
            bad("missing_unit_name", "unit name (排污单位名称) is empty")

        credit = normalise_text(cell.get("credit_code", "")).upper()
        credit_ok = False
        if not credit:
            bad("missing_credit_code", "credit code (统一社会信用代码) is empty")
        else:
            problem = credit_code_problem(credit)
            if problem is None:
                credit_ok = True
            else:
                bad("bad_credit_code", problem)
        permit = normalise_text(cell.get("permit_no", "")).upper() or None
        if permit is not None and credit_ok:
            p = permit_no_problem(permit, credit)
            if p is not None:
                bad(*p)

        city_ok, city = self._city(cell.get("city", ""), bad, warn)
        county = ""
        if city_ok:
            try:
                resolved = self.ref.resolve_county(cell.get("county", ""), city)
            except CountyError as exc:
                bad(exc.code, str(exc))
            else:
                city, county = resolved.city, resolved.county

        kind = self._outlet(cell, bad)
        intervals = {
            name: self._interval(name, cell.get(name, ""), bad)
            for name in ("rtd_interval_s", "minute_interval_s", "online_after_s")
        }
        park = self._park(cell.get("park", ""), city, warn)

        if codes:
            self.result.problems.append(
                RowProblem(line, mn or None, unit_name or None, tuple(codes), tuple(reasons))
            )
            return
        assert city is not None
        assert kind is not None
        self.result.entries.append(
            RosterEntry(
                line=line,
                mn=mn,
                unit_name=unit_name,
                city=city,
                county=county,
                credit_code=credit,
                outlet_type=kind,
                permit_no=permit,
                park=park,
                industry=_text(cell.get("industry")),
                networked_city=self._flag(cell.get("networked_city", ""), "市级平台联网", warn),
                networked_province=self._flag(
                    cell.get("networked_province", ""), "省级平台联网", warn
                ),
                monitored_content=_text(cell.get("monitored_content")),
                remark=_text(cell.get("remark")),
                rtd_interval_s=intervals["rtd_interval_s"],
                minute_interval_s=intervals["minute_interval_s"],
                online_after_s=intervals["online_after_s"],
            )
        )

    def _city(self, text: str, bad: _Bad, warn: _Warn) -> tuple[bool, str | None]:
        """(valid, canonical city or None when it is to come from the county)."""
        if not normalise_text(text):
            return True, self.city
        city = self.ref.city(text)
        if city is None:
            bad("unknown_city", f"unknown city {text.strip()!r} (not one of Jiangsu's 13)")
            return False, None
        if self.city is not None and city != self.city:
            warn(f"city column says {city}, --city says {self.city}: the column is used")
        return True, city

    def _outlet(self, cell: dict[str, str], bad: _Bad) -> str | None:
        text = cell.get("outlet_type", "").strip()
        if text:
            kind = outlet_type(text)
            if kind is None:
                bad("bad_outlet_type", f"outlet type {text!r} is not 废水, 废气, 工况 or 用电")
            return kind
        content = normalise_text(cell.get("monitored_content", ""))
        for prefix, kind in (("废水", "water"), ("废气", "gas")):
            if content.startswith(prefix):
                return kind
        bad("missing_outlet_type", "outlet type (排口类型) is empty")
        return None

    @staticmethod
    def _interval(name: str, text: str, bad: _Bad) -> int | None:
        t = normalise_text(text)
        if not t:
            return None
        if not t.isdigit() or not t.isascii() or int(t) > MAX_INTERVAL_S:
            bad("bad_interval", f"{name} {text!r} is not whole seconds 0-{MAX_INTERVAL_S}")
            return None
        return int(t)

    def _park(self, text: str, city: str | None, warn: _Warn) -> str | None:
        name = normalise_text(text)
        if not name:
            return None
        park = self.ref.park(name, city)
        if park is not None:
            return park.name
        elsewhere = self.ref.park(name)
        if elsewhere is not None:
            warn(f"park {name} is in {elsewhere.city} in the plan's list, not in {city}")
        else:
            warn(f"park {name} is not in the plan's list of 158 parks")
        return name

    @staticmethod
    def _flag(text: str, what: str, warn: _Warn) -> bool | None:
        t = normalise_text(text).lower()
        if not t:
            return None
        if t in _TRUE:
            return True
        if t in _FALSE:
            return False
        warn(f"{what} {text!r} is neither 是 nor 否: stored as unknown")
        return None


def _text(value: str | None) -> str | None:
    if value is None:
        return None
    t = value.strip()
    return t or None


def parse_roster(data: bytes, ref: Reference, *, city: str | None = None) -> RosterParse:
    """Check every row of a roster file. ``city`` is the canonical ``--city`` (or None).

    Raises ``RosterFileError`` when the file as a whole is unusable; row problems are
    collected in the result instead."""
    if len(data) > MAX_ROSTER_BYTES:
        raise RosterFileError(f"file is larger than {MAX_ROSTER_BYTES // (1024 * 1024)} MB")
    text, encoding = decode_roster(data)
    rows = _read_rows(text)
    header_at = _find_header(rows)
    result = RosterParse(encoding=encoding)
    index: dict[str, int] = {}
    for i, name in enumerate(rows[header_at][1]):
        fld = _FIELD_BY_HEADER.get(_header_key(name))
        if fld is None or fld in index:
            if name.strip():
                result.ignored_columns.append(name.strip())
            continue
        index[fld] = i
        result.columns[fld] = name.strip()
    missing = [c for c in REQUIRED_COLUMNS if c not in index]
    if missing:
        raise RosterFileError(f"missing columns: {', '.join(missing)}")
    if "outlet_type" not in index:
        result.warnings.append((0, "no outlet type column: inferred from 监控内容 where possible"))
    if result.ignored_columns:
        result.warnings.append((0, f"columns not used: {', '.join(result.ignored_columns)}"))
    checker = _RowChecker(ref, city, result)
    for line, cells in rows[header_at + 1 :]:
        if not any(c.strip() for c in cells):
            continue
        result.rows += 1
        if result.rows > MAX_ROSTER_ROWS:
            raise RosterFileError(f"more than {MAX_ROSTER_ROWS} data rows")
        cell = {f: cells[i][:MAX_CELL_CHARS] for f, i in index.items() if i < len(cells)}
        checker.check(line, cell)
    return result
