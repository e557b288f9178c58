"""The ``hj212-gateway`` command line.

Each sub-command lives in its own module exposing ``register(subparsers)``, which adds
its parser and sets ``func`` to a callable taking the parsed namespace and returning the
exit code: 0 success, 1 done with failures, 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that provide sub-commands, in the order --help lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "gateway.cmd_serve",
    "gateway.cmd_decode",
    "gateway.cmd_replay",
    "gateway.cmd_db",
    "gateway.cmd_device",
    "gateway.cmd_send",
    "gateway.cmd_report",
    "gateway.cmd_simulate",
    "gateway.cmd_config",
)

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hj212-gateway",
        description="HJ 212 gateway: receive, decode, store and answer pollution-source data.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a command not built yet; the others still work
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
