"""Shared CLI flags that map onto settings keys (CLI > environment > TOML > defaults)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from config import ConfigError, Settings, load_settings

# flag dest -> (section, key)
_FLAG_KEYS: dict[str, tuple[str, str]] = {
    "host": ("listen", "host"),
    "port": ("listen", "port"),
    "workers": ("listen", "workers"),
    "dsn": ("storage", "dsn"),
    "sqlite_path": ("storage", "sqlite_path"),
    "metrics_port": ("metrics", "port"),
    "ack_policy": ("ack", "policy"),
    "auth_policy": ("auth", "policy"),
    "log_level": ("log", "level"),
    "log_format": ("log", "format"),
}


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="TOML settings file (below HJ212_* env and flags)"
    )


def add_storage_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dsn", help="PostgreSQL DSN (default: the embedded SQLite file)")
    parser.add_argument("--sqlite-path", metavar="PATH", help="SQLite file when no DSN is set")


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """Nested overrides from the flags that were given."""
    out: dict[str, dict[str, Any]] = {}
    for dest, (section, key) in _FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is not None:
            out.setdefault(section, {})[key] = value
    return out


def settings_from(args: argparse.Namespace) -> Settings | None:
    """Load settings for a command; print the problem and return None when invalid."""
    try:
        return load_settings(getattr(args, "config", None), overrides_from(args))
    except ConfigError as exc:
        print(f"hj212-gateway: invalid configuration:\n{exc}", file=sys.stderr)
        return None
