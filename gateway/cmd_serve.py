"""``hj212-gateway serve``: run the TCP gateway."""

from __future__ import annotations

import argparse

from gateway.app import run
from gateway.settings_cli import add_config_flag, add_storage_flags, settings_from

EPILOG = """\
examples:
  hj212-gateway serve                              # SQLite ./hj212.sqlite3, port 2121
  hj212-gateway serve --port 0 --metrics-port 0    # free ports, named in the log
  hj212-gateway serve --dsn postgresql://gw@db/hj212
  HJ212_STORAGE__DSN=postgresql://gw@db/hj212 hj212-gateway serve --config gw.toml

Devices connect on --port; /metrics, /healthz and /readyz are on --metrics-port.
SIGTERM or Ctrl-C drains: no more reads, queued rows flushed, then exit.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run the gateway",
        description="Receive HJ 212 frames over TCP, store them, reply once durable.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_flag(p)
    p.add_argument("--host", help="listen address (default 0.0.0.0)")
    p.add_argument("--port", type=int, help="device port (default 2121; 0 = any free port)")
    p.add_argument("--metrics-port", type=int, help="metrics/health port (default 9212)")
    p.add_argument(
        "--workers", type=int, help="worker processes sharing the port (default 1; SO_REUSEPORT)"
    )
    add_storage_flags(p)
    p.add_argument("--ack-policy", choices=["durable", "on_receive"])
    p.add_argument("--auth-policy", choices=["open", "registry", "quarantine"])
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["auto", "json", "console"])
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if settings is None:
        return 2
    return run(settings)
