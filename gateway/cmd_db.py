"""``hj212-gateway migrate`` and ``hj212-gateway maintain``: database chores in the foreground.

Both use the configured store (``storage.dsn``, else the SQLite file), print one line per
thing done (or JSON with ``--json``), and exit 0 on success, 1 when the database refused
or could not be reached (one line on stderr saying why), 2 on usage or configuration
errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable

from config import Settings
from gateway.settings_cli import add_config_flag, add_storage_flags, settings_from
from storage import StorageError, Store, open_store

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    migrate = sub.add_parser(
        "migrate",
        help="apply pending database migrations",
        description="Create or upgrade the hj212 schema (PostgreSQL/TimescaleDB) or the "
        "SQLite file, and print the migrations applied. Safe to run repeatedly and from "
        "several hosts at once (an advisory lock serialises them).",
        epilog="examples:\n"
        "  hj212-gateway migrate --dsn postgresql://gateway@db/hj212\n"
        "  hj212-gateway migrate --config gw.toml --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(migrate)
    migrate.set_defaults(func=_run_migrate)

    maintain = sub.add_parser(
        "maintain",
        help="run retention, compression and partition jobs now",
        description="Plain PostgreSQL: create the coming days' frame partitions and drop "
        "those past storage.frame_retention_days. TimescaleDB: compress chunks older than "
        "storage.compress_after_days and drop chunks past retention. SQLite: delete old "
        "frames. Prints what ran; schedule it daily (cron, systemd timer).",
        epilog="examples:\n"
        "  hj212-gateway maintain --config gw.toml\n"
        "  HJ212_STORAGE__DSN=postgresql://gateway@db/hj212 hj212-gateway maintain --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(maintain)
    maintain.set_defaults(func=_run_maintain)


def _common(p: argparse.ArgumentParser) -> None:
    add_config_flag(p)
    add_storage_flags(p)
    p.add_argument(
        "--json",
        action="store_true",
        help='print {"store": ..., "done": [...]} instead of lines',
    )


def _run_migrate(args: argparse.Namespace) -> int:
    return _run(args, "migrate", lambda store: store.migrate(), "nothing to apply")


def _run_maintain(args: argparse.Namespace) -> int:
    async def maintain(store: Store) -> list[str]:
        return await store.maintain()

    return _run(args, "maintain", maintain, "nothing to do")


def _run(
    args: argparse.Namespace,
    command: str,
    job: Callable[[Store], Awaitable[list[str]]],
    nothing: str,
) -> int:
    settings = settings_from(args)
    if settings is None:
        return EXIT_USAGE
    try:
        kind, done = asyncio.run(_with_store(settings, job))
    except StorageError as exc:
        print(f"hj212-gateway {command}: failed: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps({"store": kind, "done": done}, ensure_ascii=False))
    elif done:
        for line in done:
            print(line)
    else:
        print(nothing)
    return EXIT_OK


async def _with_store(
    settings: Settings, job: Callable[[Store], Awaitable[list[str]]]
) -> tuple[str, list[str]]:
    store = open_store(settings.storage)
    await store.open()
    try:
        return store.kind, await job(store)
    finally:
        await store.close()


def _one_line(text: str) -> str:
    return " ".join(text.split())
