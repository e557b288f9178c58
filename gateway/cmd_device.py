"""``hj212-gateway device ACTION``: the device registry (``hj212.device``).

Actions: ``import`` (a networking roster in the plan's attachment 3 layout). Each action
is a function registered in ``ACTIONS``; ``add``, ``set``, ``disable`` and ``approve``
(from quarantine) take the same shape: a ``register_<action>(subparsers)`` adding the
parser and a ``_run_<action>(args) -> exit code``.

Exit codes: 0 every row imported; 1 done with failures (bad rows were listed and skipped,
the good rows imported; or the database refused); 2 usage errors, unreadable files,
missing columns, or no PostgreSQL configured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from gateway.cmd_device_admin import register_add, register_approve, register_disable, register_set
from gateway.settings_cli import add_config_flag, settings_from
from storage.base import StorageError
from storage.roster import ImportCounts, connect, import_roster
from storage.roster_csv import RosterFileError, RosterParse, parse_roster
from storage.roster_ref import UNKNOWN_CITY, load_reference

__all__ = ["ACTIONS", "register"]

EXIT_OK: Final = 0
EXIT_FAILURES: Final = 1
EXIT_USAGE: Final = 2

IMPORT_EPILOG: Final = """\
examples:
  hj212-gateway device import roster.csv --dsn postgresql://gateway@db/hj212
  hj212-gateway device import 南京市联网名单.csv --city 南京市 --json > import.json
  hj212-gateway device import roster.csv --dry-run      # check only, no database needed

Columns (Chinese or English headers; UTF-8 or GBK; a title row above the header is fine):
  序号 seq, 排污单位名称 unit_name, 所属设区市 city, 所属县（市、区） county,
  统一社会信用代码 credit_code, 排污许可证编码 permit_no, 行业类别 industry,
  是否与市级平台联网 networked_city, 是否与省级平台联网 networked_province,
  监控内容 monitored_content, 备注 remark, MN mn, 排口类型 outlet_type (废水/废气/工况/用电),
  所属园区 park, 实时数据间隔(秒) rtd_interval_s, 分钟数据间隔(秒) minute_interval_s,
  离线判定(秒) online_after_s.
Required: MN, unit name, credit code, county. The city comes from the city column, else
--city, else the county when its name is unique in Jiangsu (鼓楼区 is not).

Re-importing updates changed rows and leaves the others alone. Every invalid row is listed
with its line number and reasons; the valid rows are imported. Exit 0 all rows imported,
1 some rows invalid (or the database failed), 2 usage or unreadable file.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "device",
        help="manage the device registry (import a networking roster)",
        description="The device registry (hj212.device): one row per MN, with its unit, "
        "city, county, park, credit code, permit number and expected intervals.",
        epilog="examples:\n  hj212-gateway device import roster.csv --dsn postgresql://gateway@db/hj212",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    for register_action in ACTIONS.values():
        register_action(actions)
    p.set_defaults(func=lambda _args: _usage(p))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def register_import(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = actions.add_parser(
        "import",
        help="import a networking roster (CSV, the plan's attachment 3 layout)",
        description="Check every row of a roster and insert or update one hj212.device row per MN.",
        epilog=IMPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", metavar="FILE.csv", help="the roster ('-' = stdin)")
    p.add_argument("--city", help="city of rows that have no city column value (e.g. 南京市)")
    p.add_argument("--dry-run", action="store_true", help="check the file; write nothing")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_config_flag(p)
    add_dsn_flag(p)
    p.set_defaults(func=_run_import)


ACTIONS: Final[dict[str, Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]]] = {
    "import": register_import,
    "add": register_add,
    "set": register_set,
    "disable": register_disable,
    "approve": register_approve,
}


def add_dsn_flag(p: argparse.ArgumentParser) -> None:
    """``--dsn`` (settings key ``storage.dsn``): the roster and its reports live in
    PostgreSQL, so the SQLite flags of other commands do not apply here."""
    p.add_argument(
        "--dsn",
        help="PostgreSQL DSN (default: storage.dsn from --config or HJ212_STORAGE__DSN)",
    )


def _error(message: str) -> int:
    print(f"hj212-gateway device import: {message}", file=sys.stderr)
    return EXIT_USAGE


def _run_import(args: argparse.Namespace) -> int:
    ref = load_reference()
    city: str | None = None
    if args.city:
        city = ref.city(args.city)
        if city is None or city == UNKNOWN_CITY:
            return _error(f"--city {args.city!r} is not one of {', '.join(ref.cities)}")
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        return _error(f"cannot read {args.file}: {exc.strerror or exc}")
    try:
        parsed = parse_roster(data, ref, city=city)
    except RosterFileError as exc:
        return _error(f"{args.file}: {exc}")

    counts: ImportCounts | None = None
    failure: str | None = None
    if not args.dry_run:
        settings = settings_from(args)
        if settings is None:
            return EXIT_USAGE
        if settings.storage.dsn is None:
            return _error(
                "the roster is kept in PostgreSQL: set storage.dsn (--dsn, HJ212_STORAGE__DSN) "
                "or use --dry-run to check the file only"
            )
        dsn = settings.storage.dsn.get_secret_value()
        try:
            counts = asyncio.run(_store(dsn, parsed, source=Path(args.file).name))
        except StorageError as exc:
            failure = " ".join(str(exc).split())
    result = _result(args, parsed, counts, failure)
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        _print_text(result)
    if failure is not None:
        print(f"hj212-gateway device import: database failed: {failure}", file=sys.stderr)
        return EXIT_FAILURES
    return EXIT_FAILURES if parsed.problems else EXIT_OK


async def _store(dsn: str, parsed: RosterParse, *, source: str) -> ImportCounts:
    conn = await connect(dsn)
    try:
        return await import_roster(conn, parsed.entries, columns=parsed.columns, source=source)
    finally:
        await conn.close()


def _result(
    args: argparse.Namespace,
    parsed: RosterParse,
    counts: ImportCounts | None,
    failure: str | None,
) -> dict[str, Any]:
    return {
        "file": args.file,
        "encoding": parsed.encoding,
        "dry_run": bool(args.dry_run),
        "rows": parsed.rows,
        "valid": len(parsed.entries),
        "invalid": len(parsed.problems),
        "inserted": None if counts is None else counts.inserted,
        "updated": None if counts is None else counts.updated,
        "unchanged": None if counts is None else counts.unchanged,
        "error": failure,
        "columns": parsed.columns,
        "problems": [
            {
                "line": p.line,
                "mn": p.mn,
                "unit_name": p.unit_name,
                "codes": list(p.codes),
                "reason": p.reason,
            }
            for p in parsed.problems
        ],
        "warnings": [{"line": line, "message": msg} for line, msg in parsed.warnings],
    }


def _print_text(r: dict[str, Any]) -> None:
    head = f"{r['file']}: {r['rows']} rows read ({r['encoding']}); {r['valid']} valid"
    if r["dry_run"]:
        head += " (dry run: nothing written)"
    elif r["error"] is None:
        head += (
            f"; imported: {r['inserted']} new, {r['updated']} updated, {r['unchanged']} unchanged"
        )
    head += f"; {r['invalid']} not imported"
    print(head)
    for p in r["problems"]:
        who = p["mn"] or "(no MN)"
        if p["unit_name"]:
            who += f" {p['unit_name']}"
        print(f"line {p['line']}: {who}: {', '.join(p['codes'])}: {p['reason']}")
    for w in r["warnings"]:
        where = f"line {w['line']}" if w["line"] else "file"
        print(f"warning: {where}: {w['message']}")
