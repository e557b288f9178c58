"""``hj212-gateway simulate``: N simulated data acquisition units against a gateway."""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import json
import sys
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.sim import (
    MODES,
    STORM_STYLES,
    FleetConfig,
    RunConfig,
    SimStats,
    make_fleet,
    parse_mix,
    processes_needed,
    render_text,
    run_in_loop,
    run_processes,
    summary,
)
from gateway.sim.content import local_text
from gateway.sim.fleet import MAX_DEVICES, QUIRKS_2005, VERSIONS
from gateway.sim.runner import SOCKETS_PER_PROCESS_MAX

EPILOG = """\
examples:
  hj212-gateway simulate --to 127.0.0.1:2121 --devices 100 --duration 60
  hj212-gateway simulate --to 127.0.0.1:2121 --devices 12000 --processes 2 --speed 10 \\
      --duration 120 --json
  hj212-gateway simulate --to 127.0.0.1:2121 --devices 2000 --mode reconnect-storm
  hj212-gateway simulate --to 127.0.0.1:2121 --devices 12000 --processes 2 \\
      --mode backfill-storm --history-hours 24 --duration 600

Schedule per unit (simulated time): 2011 every --rtd-interval s, 2051 every 10 min, 2061
after each hour, 2031 after each day, 3020 parameters every 5 min (2017/2025 units),
9015 heartbeats every 60 s (2025 units); first sends spread over each period.
--speed 60 runs one simulated minute per real second. Values are a function of --seed,
so the distinct rows sent (reported) are exactly what the gateway should store.

Exit 0 when every unit stayed connected, every frame was sent and every expected reply
came; 1 otherwise; 2 on usage errors.
"""

OVER_TIME_S = 10.0
"""DAU default reply timeout on cellular links (protocol.md 6.6, HJ 212-2017 Table 1)."""
OVER_TIME_MIN_S = 2.0
"""Compressed time shortens the default timeout (OverTime / speed) but never below
this: ten times the gateway's 200 ms group commit, so a healthy gateway is not
mistaken for a slow one."""
RE_COUNT = 3
"""DAU default retry count (HJ 212-2017 Table 1)."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate N data acquisition units against a gateway",
        description="Open one TCP connection per simulated unit and send HJ 212 traffic "
        "on a realistic schedule, waiting for replies like a real DAU.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--to", required=True, metavar="HOST:PORT", help="gateway address")
    p.add_argument("--devices", type=int, default=100, help="simulated units (default 100)")
    p.add_argument(
        "--processes",
        type=int,
        help=f"processes to spread connections over (default: enough for "
        f"{SOCKETS_PER_PROCESS_MAX} per process)",
    )
    p.add_argument("--duration", type=float, default=60.0, help="real seconds (default 60)")
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per second")
    p.add_argument("--mode", choices=MODES, default="steady")
    p.add_argument(
        "--history-hours", type=int, default=24, help="backfill storm: hours of 2061 history"
    )
    p.add_argument(
        "--storm-after", type=float, help="reconnect storm: seconds in (default duration/3)"
    )
    p.add_argument(
        "--storm-style",
        choices=STORM_STYLES,
        default="reset",
        help="reconnect storm: old connections reset, or left open and silent (dead modems)",
    )
    p.add_argument("--profile-mix", default="water=0.5,gas=0.4,incinerator=0.1")
    p.add_argument("--version-mix", default="2017=0.8,2005=0.1,2025=0.1")
    p.add_argument("--quirky-share", type=float, default=0.1, help="share of quirky units")
    p.add_argument("--seed", type=int, default=1, help="fleet and values (default 1)")
    p.add_argument("--rtd-interval", type=int, default=30, help="2011 period, s (30..3600)")
    p.add_argument(
        "--over-time",
        type=float,
        help=f"reply timeout, real s (default {OVER_TIME_S:g}, divided by --speed, "
        f"at least {OVER_TIME_MIN_S:g})",
    )
    p.add_argument("--re-count", type=int, default=RE_COUNT, help="resends before giving up")
    p.add_argument(
        "--idle-hold",
        type=float,
        default=0.0,
        help="seconds to hold every connection idle before sending (default 0)",
    )
    p.add_argument(
        "--start",
        help="simulated start, local ISO time (default: now minus duration x speed, so "
        "no DataTime lies in the future)",
    )
    p.add_argument("--timezone", default="Asia/Shanghai", help="the units' wall-clock zone")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _fail(message: str) -> int:
    print(f"hj212-gateway simulate: {message}", file=sys.stderr)
    return 2


def parse_target(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65_536:
        raise ValueError(f"--to wants HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _local_seconds(zone: ZoneInfo, moment: dt.datetime) -> int:
    local = moment.astimezone(zone).replace(tzinfo=None)
    return int((local - dt.datetime(1970, 1, 1)).total_seconds())


def config_from_args(args: argparse.Namespace) -> tuple[RunConfig, int]:
    """The run configuration and process count; ValueError names the bad argument."""
    host, port = parse_target(args.to)
    if not 0 < args.devices <= MAX_DEVICES:
        raise ValueError(f"--devices must be between 1 and {MAX_DEVICES}")
    if args.duration <= 0 or args.speed <= 0:
        raise ValueError("--duration and --speed must be positive")
    if not 30 <= args.rtd_interval <= 3_600:
        raise ValueError("--rtd-interval must be between 30 and 3600 (HJ 212-2017)")
    if not 0.0 <= args.quirky_share <= 1.0:
        raise ValueError("--quirky-share must be between 0 and 1")
    if not 0 <= args.history_hours <= 24 * 366:
        raise ValueError("--history-hours must be between 0 and 8784 (a year)")
    if not 0 <= args.re_count <= 99:
        raise ValueError("--re-count must be between 0 and 99 (HJ 212-2017 ReCount)")
    per_unit = 2 if args.mode == "reconnect-storm" and args.storm_style == "silent" else 1
    processes = args.processes or processes_needed(args.devices, per_unit)
    if processes < 1 or processes > args.devices:
        raise ValueError("--processes must be between 1 and --devices")
    if -(-args.devices * per_unit // processes) > SOCKETS_PER_PROCESS_MAX:
        raise ValueError(
            f"{args.devices} devices over {processes} process(es) exceeds "
            f"{SOCKETS_PER_PROCESS_MAX} connections per process; use --processes "
            f"{processes_needed(args.devices, per_unit)} or more"
        )
    try:
        zone = ZoneInfo(args.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"--timezone: unknown zone {args.timezone!r}") from None
    if args.start:
        start = _local_seconds(zone, dt.datetime.fromisoformat(args.start).replace(tzinfo=zone))
    else:
        now = _local_seconds(zone, dt.datetime.now(dt.UTC))
        start = now - int(args.duration * args.speed)
    over_time = args.over_time
    if over_time is None:
        over_time = max(OVER_TIME_MIN_S, OVER_TIME_S / max(1.0, args.speed))
    if over_time <= 0:
        raise ValueError("--over-time must be positive")
    if not 0 <= args.idle_hold <= 3_600:
        raise ValueError("--idle-hold must be between 0 and 3600 s")
    fleet = FleetConfig(
        devices=args.devices,
        seed=args.seed,
        profile_mix=parse_mix(args.profile_mix, ("water", "gas", "incinerator")),
        version_mix=parse_mix(args.version_mix, VERSIONS),
        quirky_share=args.quirky_share,
        rtd_interval_s=args.rtd_interval,
    )
    cfg = RunConfig(
        host=host,
        port=port,
        fleet=fleet,
        sim_start=start,
        mode=args.mode,
        duration_s=args.duration,
        speed=args.speed,
        history_hours=args.history_hours,
        over_time_s=over_time,
        re_count=args.re_count,
        storm_after_s=args.storm_after,
        storm_style=args.storm_style,
        idle_hold_s=args.idle_hold,
    )
    return cfg, processes


def fleet_composition(fleet: FleetConfig) -> dict[str, dict[str, int]]:
    specs = make_fleet(fleet)
    quirks = collections.Counter(s.quirk for s in specs if s.quirk)
    return {
        "profiles": dict(sorted(collections.Counter(s.profile for s in specs).items())),
        "versions": dict(sorted(collections.Counter(s.version for s in specs).items())),
        "quirks": {q: quirks[q] for q in QUIRKS_2005 if quirks[q]},
    }


def report_meta(cfg: RunConfig, processes: int) -> dict[str, Any]:
    return {
        "mode": cfg.mode,
        "target": f"{cfg.host}:{cfg.port}",
        "devices": cfg.fleet.devices,
        "processes": processes,
        "speed": cfg.speed,
        "duration_s": cfg.duration_s,
        "seed": cfg.fleet.seed,
        "sim_start": local_text(cfg.sim_start),
        "sim_end": local_text(cfg.sim_end),
        "over_time_s": cfg.over_time_s,
        "re_count": cfg.re_count,
        "history_hours": cfg.history_hours if cfg.mode == "backfill-storm" else 0,
        "fleet": fleet_composition(cfg.fleet),
    }


def simulate(cfg: RunConfig, processes: int) -> SimStats:
    """Run the fleet: here on uvloop for one process, else over spawned processes."""
    if processes > 1:
        return run_processes(cfg, processes)
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(run_in_loop(cfg))
    stats = uvloop.run(run_in_loop(cfg))
    assert isinstance(stats, SimStats)
    return stats


def run(args: argparse.Namespace) -> int:
    try:
        cfg, processes = config_from_args(args)
    except ValueError as exc:
        return _fail(str(exc))
    stats = simulate(cfg, processes)
    report = summary(stats, report_meta(cfg, processes))
    if args.json:
        print(json.dumps(report))
    else:
        print(render_text(report))
    return 0 if report["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m gateway.cmd_simulate``: the same command outside the main CLI."""
    parser = argparse.ArgumentParser(
        prog="hj212-gateway simulate",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
