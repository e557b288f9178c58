"""``hj212-gateway send MN CN [KEY=VALUE ...]``: queue a platform-to-device command, wait.

The command is checked against the CN's parameter table (the device's registry profile,
else ``protocol.profile``) before it is queued, then inserted into the command table; the
gateway worker holding the device sends it (at once if connected, else when it connects,
within the command's TTL). ``send`` waits up to ``--wait`` seconds for the final state and
prints it with the device's codes and answer. A 1012 without ``SystemTime`` carries the
time at which it is sent.

Exit codes: 0 done (or queued, with ``--wait 0``), 1 failed, expired or still pending when
the wait ended, 2 usage (unknown CN, bad parameter). The secrets of 1072 / 1014 are never
printed.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import time
from typing import Any, Final

from config import Settings
from gateway.commands import flows
from gateway.settings_cli import add_config_flag, add_storage_flags, settings_from
from protocol import ProtocolError, QnGenerator, command, get_profile
from storage import StorageError, open_store
from storage.commands import TERMINAL_STATES, CommandRow, command_store
from storage.sqlite import iso_from_us

EXIT_OK, EXIT_FAILURES, EXIT_USAGE = 0, 1, 2
# How often the row is read while waiting: a person is watching, and one indexed read
# four times a second costs nothing.
WAIT_POLL_S: Final = 0.25
DEFAULT_WAIT_S: Final = 60.0
# Placeholder values used only to check a command's parameters before it is queued.
_CHECK_PW: Final = "000000"
_CHECK_ST: Final = "32"
_VERSION_OF_PROFILE: Final = {"2005": "2005", "2025": "2025"}

EPILOG = """examples:
  hj212-gateway send 88888880000000000000A001 1012                 # set the clock to now
  hj212-gateway send 88888880000000000000A001 1000 OverTime=10 ReCount=3
  hj212-gateway send 88888880000000000000A001 1011 --json          # read the device time
  hj212-gateway send 88888880000000000000A001 1062 RtdInterval=60
  hj212-gateway send 88888880000000000000A001 2061 BeginTime=20240315000000 EndTime=20240315060000
  hj212-gateway send 88888880000000000000A001 3020 PolId=w01018 InfoId=i13004
  hj212-gateway send 88888880000000000000A001 3011 PolId=w01018 --wait 3600
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "send",
        help="send a command to a device (queued until the device is connected)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("mn", help="the device's MN")
    p.add_argument("cn", help="the command code, e.g. 1012")
    p.add_argument("params", nargs="*", metavar="KEY=VALUE", help="CP parameters")
    p.add_argument(
        "--wait",
        type=float,
        default=DEFAULT_WAIT_S,
        metavar="SECONDS",
        help=f"wait this long for the final state (default {DEFAULT_WAIT_S:g}; 0: just queue)",
    )
    p.add_argument(
        "--ttl",
        type=float,
        metavar="SECONDS",
        help="how long the command may wait for the device (default: commands.ttl_s)",
    )
    p.add_argument("--profile", help="check the parameters against this profile")
    p.add_argument("--json", action="store_true", help="print the command row as JSON")
    add_config_flag(p)
    add_storage_flags(p)
    p.set_defaults(func=run)


def _usage(message: str) -> int:
    print(f"hj212-gateway send: {message}", file=sys.stderr)
    return EXIT_USAGE


def _parse_params(items: list[str]) -> dict[str, str] | str:
    params: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            return f"parameters are KEY=VALUE, got {item!r}"
        if key in params:
            return f"parameter {key} given twice"
        params[key] = value
    return params


def check(cn: str, params: dict[str, str], profile_name: str) -> str | None:
    """None when ``profile_name`` knows ``cn`` as a command and ``params`` are valid for
    it; else the problem, in words."""
    try:
        profile = get_profile(profile_name)
    except ProtocolError:
        return f"unknown profile {profile_name!r}"
    spec = profile.command_params(cn)
    if spec is None:
        return f"CN {cn} is not a command of profile {profile.name}"
    now_ms = time.time_ns() // 1_000_000
    filled = flows.with_defaults(cn, params, now_ms)
    try:
        command(
            cn=cn,
            mn="CHECK",
            pw=_CHECK_PW,
            st=_CHECK_ST,
            version=_VERSION_OF_PROFILE.get(profile.name, "2017"),
            qn=QnGenerator().next(now_ms),
            params=flows.ordered(spec, filled),
            profile=profile,
        )
    except ProtocolError as exc:
        return exc.detail or str(exc)
    return None


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if settings is None:
        return EXIT_USAGE
    cn = args.cn
    if not (len(cn) == 4 and cn.isdigit() and cn.isascii()):
        return _usage(f"CN must be 4 digits, got {cn!r}")
    params = _parse_params(args.params)
    if isinstance(params, str):
        return _usage(params)
    if args.wait < 0 or (args.ttl is not None and args.ttl <= 0):
        return _usage("--wait must be >= 0 and --ttl > 0")
    try:
        result = asyncio.run(_send(settings, args, cn, params))
    except StorageError as exc:
        print(f"hj212-gateway send: {exc}", file=sys.stderr)
        return EXIT_FAILURES
    if isinstance(result, str):
        return _usage(result)
    row, waited = result
    _print(row, as_json=args.json, waited=waited)
    if row.state == "done":
        return EXIT_OK
    if row.state == "queued" and args.wait == 0:
        return EXIT_OK
    return EXIT_FAILURES


async def _send(
    settings: Settings, args: argparse.Namespace, cn: str, params: dict[str, str]
) -> tuple[CommandRow, float] | str:
    store = open_store(settings.storage)
    await store.open()
    try:
        await store.migrate()
        profile = args.profile
        if profile is None:
            device = await store.get_device(args.mn)
            profile = str(device.get("profile") or "") if device else ""
        problem = check(cn, params, profile or settings.protocol.profile)
        if problem is not None:
            return problem
        commands = command_store(store)
        command_id = await commands.insert(
            args.mn, int(cn), params, requested_by=f"cli:{_user()}", ttl_s=args.ttl
        )
        loop = asyncio.get_running_loop()
        start = loop.time()
        row = await commands.get(command_id)
        while row is not None and row.state not in TERMINAL_STATES:
            if loop.time() - start >= args.wait:
                break
            await asyncio.sleep(WAIT_POLL_S)
            row = await commands.get(command_id)
        if row is None:  # deleted under us
            raise StorageError(f"command {command_id} disappeared", retriable=False)
        return row, loop.time() - start
    finally:
        await store.close()


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"


def _print(row: CommandRow, *, as_json: bool, waited: float) -> None:
    if as_json:
        print(json.dumps(row.public(iso_from_us), ensure_ascii=False, sort_keys=True))
        return
    codes = []
    if row.qn_rtn is not None:
        codes.append(f"QnRtn={row.qn_rtn}")
    if row.exe_rtn is not None:
        codes.append(f"ExeRtn={row.exe_rtn}")
    detail = ", ".join([*codes, f"attempts {row.attempts}"])
    state = row.state if row.reason is None else f"{row.state} ({row.reason})"
    line = f"command {row.id}: {row.mn} CN {row.cn:04d} {state}; {detail}"
    if row.state not in TERMINAL_STATES and waited > 0:
        line += f"; still {row.state} after {waited:.0f} s"
    print(line)
    answer: Any = row.answer
    if answer is not None:
        print("answer: " + json.dumps(answer, ensure_ascii=False, sort_keys=True))
