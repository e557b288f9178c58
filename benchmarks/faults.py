"""Fault benchmarks (issue 5): a junk flood beside a fleet, and a TCP soak of mutated frames.

Run:  .venv/bin/python benchmarks/faults.py --scenario flood [--junk 5000] [--devices 1000]
          [--duration 120] [--speed 10]
      .venv/bin/python benchmarks/faults.py --scenario soak [--frames 1000000] [--devices 20]
          [--duration 600]

Both start ``hj212-gateway serve`` against a throwaway PostgreSQL database (benchmarks/e2e.py
does the starting, sampling and counting) and run the simulator (``gateway.sim``) as the
well-behaved fleet, while other processes attack the same listener:

- ``flood``: ``--junk`` connections that send random bytes and never identify. Each sends a
  KiB every half second until the gateway closes it (``listen.garbage_limit_bytes``), then
  dials again. Target: the fleet's reply p99 <= 1 s and every distinct row stored.
- ``soak``: ``--frames`` mutated frames (benchmarks/protocol_soak.py's generator: random
  packets through the encoder, then bytes flipped, inserted, deleted, cut, garbage and
  stray separators spliced in) streamed over ``--soak-connections`` connections as fast as
  the gateway reads them. Target: the gateway stays up, its RSS stays bounded (the report
  gives it over time), and the fleet, on connections of its own, has every row stored.

Writes ``benchmarks/results/<date>-<scenario>.md`` and ``.json`` and prints the report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import multiprocessing as mp
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg
from e2e import (
    ADMIN_DSN,
    command_line,
    fmt,
    machine,
    render_timeline,
    run_gateway_phase,
    server_info,
    table,
    throwaway_database,
    write_report,
)
from protocol_soak import mutate, random_frame

from gateway.sim import FleetConfig, RunConfig, summary

JUNK_PROCESSES: Final = 2
"""Processes the junk connections are spread over (each holds junk / 2 sockets, well under
the 20,000 files one process may open)."""
JUNK_CHUNK: Final = 1_024
JUNK_PERIOD_S: Final = 0.5
"""Each junk connection sends a KiB every half second: at the default 64 KiB garbage limit
it is closed after about 30 s and dials again, so the flood keeps costing accepts too."""
SOAK_PROCESSES: Final = 2
SOAK_WRITE_MAX: Final = 16_384
"""Mutated frames are joined into writes of up to 16 KiB, split at random points."""
TARGET_FLOOD_P99_MS: Final = 1_000.0
LOCAL_OFFSET_S: Final = 8 * 3_600
FLEET_MN_PATTERN: Final = "32%"
"""MNs of the simulated fleet (gateway.sim: 2017/2025 units start with 320100, 2005 units
with 32); the soak's frames carry 8888... MNs, so the fleet's rows can be told apart."""


# -- the attackers (each in a process of its own) -------------------------------------------


async def _junk_connection(port: int, rng: random.Random, until: float, out: dict[str, int]):  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            out["connect_errors"] += 1
            await asyncio.sleep(1.0)
            continue
        out["connects"] += 1
        try:
            while loop.time() < until:
                writer.write(rng.randbytes(JUNK_CHUNK))
                out["bytes"] += JUNK_CHUNK
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(JUNK_PERIOD_S):
                        if await reader.read(4096) == b"":
                            out["closed_by_gateway"] += 1
                            break
        except (ConnectionError, OSError):
            out["closed_by_gateway"] += 1
        finally:
            writer.close()


def _junk_main(port: int, connections: int, seconds: float, seed: int, results: Any) -> None:
    import uvloop

    async def run() -> dict[str, int]:
        out = {"connects": 0, "connect_errors": 0, "closed_by_gateway": 0, "bytes": 0}
        rng = random.Random(seed)
        until = asyncio.get_running_loop().time() + seconds
        tasks = []
        for i in range(connections):
            tasks.append(
                asyncio.create_task(_junk_connection(port, random.Random(rng.random()), until, out))
            )
            if i % 200 == 199:
                await asyncio.sleep(0.05)  # dial in waves: no SYN storm of our own making
        await asyncio.gather(*tasks)
        return out

    results.put(uvloop.run(run()))


class _Drain(asyncio.Protocol):
    """Reads and forgets what the gateway sends (replies to the frames that were valid):
    a peer that never reads is disconnected (``write_stalled``), not what the soak tests."""

    def __init__(self, lost: asyncio.Event) -> None:
        self.lost = lost
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()


def _soak_main(  # noqa: PLR0917 (a process target takes its arguments by position)
    port: int, connections: int, frames: int, seconds: float, seed: int, results: Any
) -> None:
    import uvloop

    async def one(rng: random.Random, quota: int, out: dict[str, int], until: float) -> None:
        loop = asyncio.get_running_loop()
        sent = 0
        while sent < quota and loop.time() < until:
            lost = asyncio.Event()
            try:
                transport, _ = await loop.create_connection(
                    functools.partial(_Drain, lost), "127.0.0.1", port
                )
            except OSError:
                out["connect_errors"] += 1
                await asyncio.sleep(0.5)
                continue
            out["connects"] += 1
            while sent < quota and not lost.is_set() and loop.time() < until:
                chunk = bytearray()
                while len(chunk) < SOAK_WRITE_MAX and sent < quota:
                    chunk += mutate(rng, random_frame(rng))
                    sent += 1
                transport.write(bytes(chunk))
                out["bytes"] += len(chunk)
                # The gateway reads at its own pace: keep at most a few writes queued.
                while transport.get_write_buffer_size() > 4 * SOAK_WRITE_MAX:
                    if lost.is_set():
                        break
                    await asyncio.sleep(0.005)
                await asyncio.sleep(0)
            if lost.is_set():
                out["closed_by_gateway"] += 1
            transport.close()
        out["frames"] += sent

    async def run() -> dict[str, int]:
        out = {"connects": 0, "connect_errors": 0, "closed_by_gateway": 0, "bytes": 0, "frames": 0}
        rng = random.Random(seed)
        until = asyncio.get_running_loop().time() + seconds
        quota = -(-frames // connections)
        await asyncio.gather(
            *(one(random.Random(rng.random()), quota, out, until) for _ in range(connections))
        )
        return out

    results.put(uvloop.run(run()))


def _start(
    target: Callable[..., None], args_per_process: list[tuple[Any, ...]]
) -> Callable[[], dict[str, Any]]:
    """Start one process per argument tuple; return a function that joins them and sums
    what they report."""
    ctx = mp.get_context("spawn")
    results: Any = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, results), daemon=True) for a in args_per_process]
    for p in procs:
        p.start()
    t0 = time.monotonic()

    def finish() -> dict[str, Any]:
        total: dict[str, Any] = {}
        for _ in procs:
            part = results.get(timeout=900)
            for k, v in part.items():
                total[k] = total.get(k, 0) + v
        for p in procs:
            p.join(30)
        total["seconds"] = time.monotonic() - t0
        return total

    return finish


# -- the scenarios ---------------------------------------------------------------------------


def _fleet(args: argparse.Namespace, port: int) -> RunConfig:
    local_now = int(time.time()) + LOCAL_OFFSET_S
    return RunConfig(
        host="127.0.0.1",
        port=port,
        fleet=FleetConfig(devices=args.devices, seed=args.seed, quirky_share=args.quirky_share),
        sim_start=local_now - int(args.duration * args.speed),
        mode="steady",
        duration_s=args.duration,
        speed=args.speed,
        over_time_s=max(2.0, 10.0 / max(1.0, args.speed)),
    )


async def _fleet_rows(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            t: int(
                await conn.fetchval(
                    f"SELECT count(*) FROM hj212.{t} WHERE mn LIKE $1", FLEET_MN_PATTERN
                )
            )
            for t in ("reading", "info")
        }
    finally:
        await conn.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = dt.datetime.now().astimezone()
    side_s = args.duration + 30.0

    def attack(port: int) -> Callable[[], dict[str, Any]]:
        if args.scenario == "flood":
            per = -(-args.junk // JUNK_PROCESSES)
            return _start(
                _junk_main,
                [(port, per, args.duration, args.seed + i) for i in range(JUNK_PROCESSES)],
            )
        per_proc = -(-args.frames // SOAK_PROCESSES)
        conns = max(1, args.soak_connections // SOAK_PROCESSES)
        return _start(
            _soak_main,
            [(port, conns, per_proc, side_s, args.seed + i) for i in range(SOAK_PROCESSES)],
        )

    with throwaway_database(args.admin_dsn) as dsn:
        pg_version, postmaster = asyncio.run(server_info(dsn))
        cfg, gw, stats = run_gateway_phase(
            lambda port: _fleet(args, port),
            args.processes,
            dsn,
            postmaster=postmaster,
            background=attack,
        )
        fleet_rows = asyncio.run(_fleet_rows(dsn))
    sim = summary(stats, {"mode": cfg.mode, "devices": cfg.fleet.devices})
    gw["fleet_stored"] = fleet_rows
    gw["fleet_rows_equal"] = (
        fleet_rows["reading"] == stats.rows_reading and fleet_rows["info"] == stats.rows_info
    )
    return {
        "benchmark": f"faults-{args.scenario}",
        "started": started.isoformat(timespec="seconds"),
        "command": command_line("benchmarks/faults.py", args.argv),
        "machine": {**machine(), "postgresql": pg_version},
        "scenario": args.scenario,
        "simulator": sim,
        "gateway": gw,
    }


RSS_ROWS: Final = 12


def rss_timeline(gw: dict[str, Any]) -> str:
    """RSS, connections and frames at evenly spaced samples (the JSON keeps them all)."""
    samples = gw["samples"]
    if not samples:
        return ""
    step = max(1, len(samples) // RSS_ROWS)
    t0 = samples[0]["t"]
    rows = [
        (f"{s['t'] - t0:.0f}", f"{s['rss_kb'] / 1024:.1f}", f"{s['conns']:,}", f"{s['frames']:,}")
        for s in [*samples[::step], samples[-1]]
    ]
    return table(("s", "RSS MB", "connections", "frames (hj212_frames_total)"), rows)


def _closed_by_reason(delta: dict[str, float]) -> str:
    parts = []
    for key, value in sorted(delta.items()):
        if key.startswith("hj212_connections_closed_total{"):
            reason = key.split('reason="', 1)[1].split('"', 1)[0]
            parts.append(f"{reason} {value:,.0f}")
    return ", ".join(parts) or "none"


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def render(d: dict[str, Any]) -> str:
    sim, gw = d["simulator"], d["gateway"]
    side = gw["background"]
    lat, frames, replies = sim["reply_latency_ms"], sim["frames"], sim["replies"]
    stored, sent = gw["fleet_stored"], gw["distinct_sent"]
    equal = gw["fleet_rows_equal"]
    mb = 1 / 1024
    rejects = sum(v for k, v in gw["metrics_delta"].items() if k.startswith("hj212_rejects_total"))
    if d["scenario"] == "flood":
        attack = (
            "junk connections: dialled; closed by the gateway; bytes",
            f"{side['connects']:,}; {side['closed_by_gateway']:,}; {side['bytes'] / 1e6:,.1f} MB",
        )
    else:
        attack = (
            "mutated frames sent; connections; closed by the gateway; bytes; seconds",
            f"{side['frames']:,}; {side['connects']:,}; {side['closed_by_gateway']:,}; "
            f"{side['bytes'] / 1e6:,.1f} MB; {side['seconds']:.0f}",
        )
    rows = [
        attack,
        (
            "fleet: units; frames sent; resends; gave up",
            f"{sim['devices']:,}; {frames['sent']:,}; {frames['resends']:,}; {replies['gave_up']}",
        ),
        (
            "fleet reply latency p50 / p95 / p99 / max",
            f"{fmt(lat['p50'], 1)} / {fmt(lat['p95'], 1)} / {fmt(lat['p99'], 1)} / "
            f"{fmt(lat['max'], 1)} ms",
        ),
        (
            "fleet rows stored / distinct sent",
            f"reading {stored['reading']:,} / {sent['reading']:,}, info {stored['info']:,} / "
            f"{sent['info']:,} ({'equal' if equal else 'NOT EQUAL'})",
        ),
        ("gateway exit code (SIGTERM at the end)", str(gw["gateway_exit_code"])),
        (
            "gateway CPU while loaded; RSS start / peak / end",
            f"{gw['cpu_cores_run']:.2f} cores; {gw['rss_kb_start'] * mb:.1f} / "
            f"{gw['rss_kb_peak'] * mb:.1f} / {gw['rss_kb_end'] * mb:.1f} MB",
        ),
        (
            "open files start / peak; connections peak",
            f"{gw['open_files_start']:,} / {gw['open_files_peak']:,}; {gw['connections_peak']:,}",
        ),
        ("rejected frames counted (hj212_rejects_total)", f"{rejects:,.0f}"),
        ("connections closed, by reason", _closed_by_reason(gw["metrics_delta"])),
    ]
    if d["scenario"] == "flood":
        p99 = lat["p99"] if lat["p99"] is not None else float("inf")
        targets = [
            (
                f"fleet reply p99 <= {TARGET_FLOOD_P99_MS:.0f} ms beside the junk",
                f"{p99:.0f} ms",
                "met"
                if p99 <= TARGET_FLOOD_P99_MS
                else f"MISSED ({p99 / TARGET_FLOOD_P99_MS:.1f} x)",
            ),
        ]
    else:
        targets = [
            (
                "the server stays up",
                f"exit code {gw['gateway_exit_code']} after SIGTERM",
                _verdict(gw["gateway_exit_code"] == 0),
            ),
            (
                "RSS bounded",
                f"peak {gw['rss_kb_peak'] * mb:.1f} MB, end {gw['rss_kb_end'] * mb:.1f} MB",
                "see the RSS table",
            ),
        ]
    targets.append(
        ("every distinct fleet row stored", "equal" if equal else "not equal", _verdict(equal))
    )
    m = d["machine"]
    return "\n".join(
        [
            f"# Fault benchmark: {d['scenario']} ({d['started']})",
            "",
            f"`{d['command']}` (commit {m['commit']}, {m['cpus']} CPUs, Python {m['python']}, "
            f"{m['postgresql']}).",
            f"Gateway: `{gw['gateway_command']}`. Loopback only; gateway, PostgreSQL, fleet "
            "and attackers share the machine.",
            "",
            table(("figure", "value"), rows),
            "",
            "Targets (issue 5):",
            "",
            table(("target", "measured", "verdict"), targets),
            render_timeline(gw),
            "RSS of the gateway over the run:",
            "",
            rss_timeline(gw),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", choices=("flood", "soak"), required=True)
    p.add_argument("--devices", type=int, default=None, help="fleet units (flood 1000, soak 20)")
    p.add_argument("--junk", type=int, default=5_000, help="flood: junk connections")
    p.add_argument("--frames", type=int, default=1_000_000, help="soak: mutated frames")
    p.add_argument("--soak-connections", type=int, default=16)
    p.add_argument("--duration", type=float, default=None, help="fleet run, real seconds")
    p.add_argument("--speed", type=float, default=10.0, help="fleet schedule compression")
    p.add_argument("--processes", type=int, default=1, help="simulator processes")
    p.add_argument("--quirky-share", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--admin-dsn", default=ADMIN_DSN)
    p.add_argument("--no-write", action="store_true", help="print only, write no files")
    args = p.parse_args(argv)
    args.argv = argv
    flood = args.scenario == "flood"
    args.devices = args.devices or (1_000 if flood else 20)
    args.duration = args.duration or (120.0 if flood else 600.0)
    data = run(args)
    md = render(data)
    print(md)
    if not args.no_write:
        paths = write_report(f"faults-{args.scenario}", md, data)
        print(f"written: {paths[0]}, {paths[1]}")
    return 0 if data["gateway"]["fleet_rows_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
