"""``hj212-gateway check-config``: print the effective settings, secrets masked."""

from __future__ import annotations

import argparse
import json

from config import masked_dump
from gateway.settings_cli import add_config_flag, add_storage_flags, settings_from


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "check-config",
        help="validate and print the effective settings",
        description="Merge defaults, --config FILE, HJ212_* environment variables and flags; "
        "print the result as JSON with secrets masked. Exit 2 when invalid.",
        epilog="example:\n  HJ212_LISTEN__PORT=7000 hj212-gateway check-config --config gw.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_flag(p)
    add_storage_flags(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if settings is None:
        return 2
    print(json.dumps(masked_dump(settings), indent=2, ensure_ascii=False))
    return 0
