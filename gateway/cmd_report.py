"""``hj212-gateway report coverage|progress|quality``: who must be online, who is, and
how complete their data is.

All three read PostgreSQL (``storage.dsn``): the roster (``hj212.device``), presence,
the frame archive, readings and the daily snapshots. Times given without an offset are
local time in ``protocol.timezone`` (Asia/Shanghai); days and weeks are local too.
Formats: ``table`` (default), ``csv``, ``json`` (fields documented in the README) and
``html`` (one self-contained page with tables and a bar chart per city).

Exit codes: 0 report written; 1 the database failed; 2 usage or configuration errors.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from config import Settings
from gateway.cmd_device import add_dsn_flag
from gateway.report_html import coverage_html, progress_html, quality_html
from gateway.report_rows import coverage_doc, progress_doc, quality_doc
from gateway.report_text import (
    coverage_csv,
    coverage_table,
    progress_csv,
    progress_table,
    quality_csv,
    quality_table,
)
from gateway.settings_cli import add_config_flag, settings_from
from storage.base import StorageError
from storage.roster import (
    connect,
    coverage_at,
    ensure_snapshot,
    fetch_snapshots,
    now_us,
    quality_between,
    take_daily_snapshot,
)
from storage.roster_ref import UNKNOWN_CITY, Reference, load_reference
from storage.roster_report import DEFAULT_SILENT_HOURS, compute_progress, day_bounds_us

__all__ = ["parse_time_us", "register"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2

FORMATS: Final = ("table", "csv", "json", "html")
MAX_WEEKS: Final = 104
"""Two years of weekly rows per city: a bulletin covers weeks, a trend a year or two."""
MAX_QUALITY_DAYS: Final = 366
"""One quality report spans at most a year: the count query scans every reading of the
window, ~380 M rows a day for the province with real-time data."""
MAX_SILENT_HOURS: Final = 24 * 30

EPILOG: Final = """\
examples:
  hj212-gateway report coverage --dsn postgresql://gateway@db/hj212
  hj212-gateway report coverage --city 南京市 --details
  hj212-gateway report coverage --as-of "2024-03-15 08:00" --format json > coverage.json
  hj212-gateway report coverage --format html -o coverage.html
  hj212-gateway report progress --weeks 6 --format html -o progress.html
  hj212-gateway report quality --from 2024-03-01 --to 2024-03-07 --format csv -o quality.csv

Exit 0 report written, 1 the database failed, 2 usage or configuration errors.
"""


class _UsageError(ValueError):
    pass


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "report",
        help="coverage, weekly progress and data quality of the networking roster",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    reports = p.add_subparsers(dest="report", metavar="REPORT")
    fmt = argparse.RawDescriptionHelpFormatter

    cov = reports.add_parser(
        "coverage",
        help="per city, county and park: roster, target, online, never connected, unknown MNs",
        description="Units and MNs in the roster per city (and per county and park within "
        "a city), the plan's target, MNs ever seen, online now, seen in the last 24 h, "
        "never connected, silent for more than --silent-hours, and MNs sending data that "
        "are not in the roster.",
        epilog=EPILOG,
        formatter_class=fmt,
    )
    _common(cov)
    cov.add_argument(
        "--silent-hours",
        type=int,
        default=DEFAULT_SILENT_HOURS,
        metavar="N",
        help=f"silent = no frame for more than N hours (default {DEFAULT_SILENT_HOURS})",
    )
    cov.add_argument(
        "--details", action="store_true", help="table format: counties, parks and device lists"
    )
    cov.set_defaults(func=_run_coverage)

    prog = reports.add_parser(
        "progress",
        help="per city, networked units and MNs at the end of each week, and the change",
        description="From the daily snapshots (hj212.coverage_daily): per city, units "
        "fully and partly networked and MNs online at the end of each of the last N ISO "
        "weeks, with the change since the week before. Today's snapshot is taken first "
        "when it is missing.",
        epilog=EPILOG,
        formatter_class=fmt,
    )
    _common(prog, city=False)
    prog.add_argument("--weeks", type=int, default=4, metavar="N", help="weeks (default 4)")
    prog.add_argument(
        "--refresh",
        action="store_true",
        help="retake today's snapshot even when one exists (default: only when missing)",
    )
    prog.set_defaults(func=_run_progress)

    qual = reports.add_parser(
        "quality",
        help="per MN, county and city: transmission rate, real-time completeness, flags",
        description="Over the local days FROM..TO (inclusive): transmission rate (hourly "
        "records received / hours expected), real-time completeness against each MN's "
        "expected interval, and the share of values flagged other than N, per MN and "
        "rolled up per county, city and the province. The report prints the definitions.",
        epilog=EPILOG,
        formatter_class=fmt,
    )
    _common(qual)
    qual.add_argument("--from", dest="first", required=True, metavar="DATE", help="first day")
    qual.add_argument("--to", dest="last", required=True, metavar="DATE", help="last day")
    qual.add_argument("--details", action="store_true", help="table format: one row per MN")
    qual.set_defaults(func=_run_quality)

    p.set_defaults(func=lambda _args: _usage(p))


def _common(p: argparse.ArgumentParser, *, city: bool = True) -> None:
    p.add_argument("--format", choices=FORMATS, default="table", help="output format")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    p.add_argument(
        "--as-of",
        metavar="TIME",
        help="evaluate at TIME (ISO 8601; local time unless an offset is given; default now)",
    )
    if city:
        p.add_argument("--city", help="one city only (e.g. 南京市, or 'unknown')")
    add_config_flag(p)
    add_dsn_flag(p)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def parse_time_us(text: str, tz: ZoneInfo) -> int:
    """``2024-03-15T08:00``, ``2024-03-15 08:00:00+08:00``, ``2024-03-15`` (midnight) or
    ``now`` -> microseconds since 1970 UTC; a time without offset is local time in ``tz``."""
    if text.strip().lower() == "now":
        return now_us()
    try:
        t = dt.datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise _UsageError(f"not an ISO 8601 time: {text!r}") from exc
    if t.tzinfo is None:
        t = t.replace(tzinfo=tz)
    delta = t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _local_date(us: int, tz: ZoneInfo) -> dt.date:
    t = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)
    return t.astimezone(tz).date()


def _city(args: argparse.Namespace, ref: Reference) -> str | None:
    text = getattr(args, "city", None)
    if not text:
        return None
    if text.strip().lower() == UNKNOWN_CITY:
        return UNKNOWN_CITY
    city = ref.city(text)
    if city is None:
        raise _UsageError(f"--city {text!r} is not one of {', '.join(ref.cities)} or unknown")
    return city


def _write(args: argparse.Namespace, text: str) -> None:
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


def _run(
    args: argparse.Namespace,
    job: Callable[[Any, Settings, ZoneInfo, Reference], Awaitable[str]],
) -> int:
    name = f"hj212-gateway report {args.report}"
    settings = settings_from(args)
    if settings is None:
        return EXIT_USAGE
    if settings.storage.dsn is None:
        print(
            f"{name}: reports read PostgreSQL: set storage.dsn (--dsn, HJ212_STORAGE__DSN)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        tz = ZoneInfo(settings.protocol.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        print(f"{name}: unknown time zone {settings.protocol.timezone!r}", file=sys.stderr)
        return EXIT_USAGE
    ref = load_reference()
    dsn = settings.storage.dsn.get_secret_value()

    async def run() -> str:
        conn = await connect(dsn)
        try:
            return await job(conn, settings, tz, ref)
        finally:
            await conn.close()

    try:
        # Usage problems found before connecting are reported without a database.
        _precheck(args, tz, ref)
        text = asyncio.run(run())
        _write(args, text)
    except _UsageError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StorageError as exc:
        print(f"{name}: database failed: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"{name}: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _precheck(args: argparse.Namespace, tz: ZoneInfo, ref: Reference) -> None:
    _city(args, ref)
    if args.as_of:
        parse_time_us(args.as_of, tz)
    if args.report == "coverage" and not 0 < args.silent_hours <= MAX_SILENT_HOURS:
        raise _UsageError(f"--silent-hours must be 1-{MAX_SILENT_HOURS}")
    if args.report == "progress" and not 0 < args.weeks <= MAX_WEEKS:
        raise _UsageError(f"--weeks must be 1-{MAX_WEEKS}")
    if args.report == "quality":
        _quality_days(args)


def _as_of(args: argparse.Namespace, tz: ZoneInfo) -> int:
    return parse_time_us(args.as_of, tz) if args.as_of else now_us()


# -- coverage ---------------------------------------------------------------------------


def _run_coverage(args: argparse.Namespace) -> int:
    async def job(conn: Any, _s: Settings, tz: ZoneInfo, ref: Reference) -> str:
        city = _city(args, ref)
        report = await coverage_at(
            conn,
            as_of_us=_as_of(args, tz),
            silent_hours=args.silent_hours,
            city=city,
            ref=ref,
        )
        doc = coverage_doc(report, tz)
        return _render(
            args,
            doc,
            table=lambda d: coverage_table(d, details=args.details or city is not None),
            csv_=coverage_csv,
            html_=coverage_html,
        )

    return _run(args, job)


def _render(
    args: argparse.Namespace,
    doc: dict[str, Any],
    *,
    table: Callable[[dict[str, Any]], str],
    csv_: Callable[[dict[str, Any]], str],
    html_: Callable[[dict[str, Any]], str],
) -> str:
    if args.format == "json":
        return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"
    if args.format == "csv":
        return csv_(doc)
    if args.format == "html":
        return html_(doc)
    return table(doc)


# -- progress ---------------------------------------------------------------------------


def _run_progress(args: argparse.Namespace) -> int:
    async def job(conn: Any, _s: Settings, tz: ZoneInfo, ref: Reference) -> str:
        as_of = _as_of(args, tz)
        today = _local_date(as_of, tz)
        try:
            if args.refresh:
                await take_daily_snapshot(conn, today, tz=tz.key, at_us=as_of, ref=ref)
                taken = True
            else:
                taken = await ensure_snapshot(conn, today, tz=tz.key, at_us=as_of, ref=ref)
        except StorageError as exc:
            if exc.kind != "permission":
                raise
            # a read-only role (hj212_reader) still gets the weeks the gateway snapshotted
            print(
                f"hj212-gateway report progress: today's snapshot not taken: {exc}", file=sys.stderr
            )
            taken = False
        first = today - dt.timedelta(days=today.weekday()) - dt.timedelta(weeks=args.weeks)
        snapshots = await fetch_snapshots(conn, first, today)
        report = compute_progress(snapshots, ref, today=today, weeks=args.weeks)
        doc = progress_doc(report, tz, snapshot_taken=taken)
        return _render(args, doc, table=progress_table, csv_=progress_csv, html_=progress_html)

    return _run(args, job)


# -- quality ----------------------------------------------------------------------------


def _quality_days(args: argparse.Namespace) -> tuple[dt.date, dt.date]:
    try:
        first = dt.date.fromisoformat(args.first)
        last = dt.date.fromisoformat(args.last)
    except ValueError as exc:
        raise _UsageError(f"--from/--to want dates like 2024-03-01: {exc}") from exc
    if last < first:
        raise _UsageError("--to is before --from")
    if (last - first).days + 1 > MAX_QUALITY_DAYS:
        raise _UsageError(f"the window is longer than {MAX_QUALITY_DAYS} days")
    return first, last


def _run_quality(args: argparse.Namespace) -> int:
    async def job(conn: Any, _s: Settings, tz: ZoneInfo, ref: Reference) -> str:
        first, last = _quality_days(args)
        start, _ = day_bounds_us(first, tz.key)
        _, end = day_bounds_us(last, tz.key)
        end = min(end, _as_of(args, tz))
        if end <= start:
            raise _UsageError(f"{first} has not begun yet (as of the evaluation time)")
        report = await quality_between(
            conn, start_us=start, end_us=end, city=_city(args, ref), ref=ref
        )
        doc = quality_doc(report, tz, first_day=first, last_day=last)
        return _render(
            args,
            doc,
            table=lambda d: quality_table(d, details=args.details),
            csv_=quality_csv,
            html_=quality_html,
        )

    return _run(args, job)
