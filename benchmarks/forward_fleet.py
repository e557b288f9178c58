"""Forwarding at fleet scale: 12,000 simulated units forwarded per device to one fake
upstream platform, which is cut off for a minute in the middle of the run.

Run:  .venv/bin/python benchmarks/forward_fleet.py [--devices 12000] [--workers 2]
          [--duration 240] [--cut-at 60] [--cut-for 60] [--speed 1]

All on this machine, loopback only:

1. a throwaway PostgreSQL database (dropped at the end);
2. a fake upstream platform in its own process (uvloop): it reads frames on any number of
   connections, records each frame's digest per MN in arrival order, and answers a frame
   that asks for a reply with its 9014 in the same step (a platform with durable replies:
   what it recorded it answered). On command it stops listening and drops every
   connection ("cut"), and later listens again ("restore");
3. the gateway (``hj212-gateway serve --workers N --config forward.toml``) forwarding every
   upload to that platform in ``per_device`` mode: one upstream connection per unit. A
   worker holds its units' device connections and their upstream connections, so each
   worker's files stay under the 20,000-file limit (``listen.max_connections`` and
   ``forward.max_connections`` are set so that their sum plus the reserve fits);
4. the simulator (``gateway.sim``, steady schedule) for ``--duration`` seconds; the cut
   starts ``--cut-at`` seconds in and lasts ``--cut-for`` seconds;
5. samples every second: the forward lag, queued frames, upstream connections, frames the
   platform recorded, and the open files of every gateway process;
6. when the simulator is done, waits for the outbox to drain, then compares, per MN, the
   digests the platform recorded with the outbox rows of the gateway (in id order, the
   order the frames were stored): every frame delivered, in order, none twice;
7. prints the report and writes ``benchmarks/results/<date>-forward-fleet.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg
from e2e import (
    ADMIN_DSN,
    command_line,
    cpu_seconds,
    fmt,
    free_port,
    machine,
    metric_sum,
    open_files,
    process_tree,
    rss_kb,
    scrape,
    table,
    throwaway_database,
    write_report,
)

from gateway.sim import FleetConfig, RunConfig, SimStats, processes_needed, run_processes

UPSTREAM: Final = "prov"
SAMPLE_S: Final = 1.0
READY_TIMEOUT_S: Final = 60.0
DRAIN_MAX_S: Final = 900.0
"""After the simulator stops, how long the outbox may take to empty before the run is
reported as not drained (a minute's backlog of 12,000 units drains in well under that)."""
STOP_TIMEOUT_S: Final = 60.0
FILE_LIMIT: Final = 20_000
"""Open files one process may have here (``ulimit -Hn``)."""
DEVICE_SOCKETS_PER_WORKER: Final = 9_000
"""``listen.max_connections`` per worker: 12,000 units over 2 workers is ~6,000 each
(SO_REUSEPORT spreads them by hash, not evenly), with room."""
UPSTREAM_SOCKETS_PER_WORKER: Final = 10_000
"""``forward.max_connections`` per worker: 9,000 + 10,000 + the 256 reserve < 20,000."""


# -- the fake upstream platform (its own process) ------------------------------------------


def _platform_main(port: int, control: Connection) -> None:
    import uvloop

    from protocol import Frame, FrameBuffer, ProtocolError, decode, reply_for

    records: dict[str, list[bytes]] = {}
    counts = {"frames": 0, "connections_peak": 0, "accepted": 0, "undecodable": 0}
    conns: set[Any] = set()

    class Conn(asyncio.Protocol):
        def __init__(self) -> None:
            self.framer = FrameBuffer()
            self.transport: Any = None

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            conns.add(self)
            counts["accepted"] += 1
            counts["connections_peak"] = max(counts["connections_peak"], len(conns))

        def connection_lost(self, exc: Exception | None) -> None:
            conns.discard(self)

        def data_received(self, data: bytes) -> None:
            for item in self.framer.feed(data):
                if type(item) is not Frame:
                    continue
                try:
                    packet = decode(item)
                except ProtocolError:
                    counts["undecodable"] += 1
                    continue
                digest = hashlib.blake2b(item.raw, digest_size=16).digest()
                records.setdefault(packet.mn, []).append(digest)
                counts["frames"] += 1
                reply = reply_for(packet)
                if reply is not None:
                    self.transport.write(reply)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server: asyncio.Server | None = None

        async def listen() -> asyncio.Server:
            return await loop.create_server(
                Conn, "127.0.0.1", port, backlog=4096, reuse_address=True
            )

        server = await listen()
        control.send(("ready", port))
        while True:
            command = await loop.run_in_executor(None, control.recv)
            if command == "cut":
                if server is not None:
                    server.close()
                    for conn in list(conns):
                        conn.transport.abort()
                    await server.wait_closed()
                    server = None
                control.send(("cut", counts["frames"]))
            elif command == "restore":
                if server is None:
                    server = await listen()
                control.send(("restored", counts["frames"]))
            elif command == "counts":
                control.send(("counts", dict(counts, connections=len(conns))))
            elif command == "dump":
                control.send(("dump", records, dict(counts)))
            elif command == "stop":
                if server is not None:
                    server.close()
                return

    uvloop.run(main())


class Platform:
    def __init__(self) -> None:
        self.port = free_port()
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_platform_main, args=(self.port, child), daemon=True)
        self.lock = threading.Lock()

    def start(self) -> None:
        self.proc.start()
        assert self._conn.recv()[0] == "ready"

    def ask(self, command: str) -> Any:
        with self.lock:
            self._conn.send(command)
            return self._conn.recv()

    def stop(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            self.ask("stop")
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


# -- the gateway ---------------------------------------------------------------------------


def gateway_config(path: Path, upstream_port: int, args: argparse.Namespace) -> None:
    path.write_text(
        f"""
[listen]
max_connections = {DEVICE_SOCKETS_PER_WORKER}

[forward]
max_connections = {UPSTREAM_SOCKETS_PER_WORKER}
retry_initial_s = 1.0
retry_max_s = {args.retry_max}

[[forward.upstreams]]
name = "{UPSTREAM}"
host = "127.0.0.1"
port = {upstream_port}
mode = "per_device"
"""
    )


class Gateway:
    def __init__(self, dsn: str, config: Path, workers: int, log_path: Path) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="hj212-fwd-bench-"))
        exe = Path(sys.executable).with_name("hj212-gateway")
        self.cmd = [
            str(exe),
            "serve",
            "--config",
            str(config),
            "--dsn",
            dsn,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--metrics-port",
            str(self.metrics_port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
        ]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, HJ212_STORAGE__SPOOL_DIR=str(self.workdir / "spool"))
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, env=env
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited early; see {self.log_path}")
            with contextlib.suppress(OSError, ValueError):
                m = scrape(self.metrics_port)
                if m:
                    return
            time.sleep(0.3)
        raise RuntimeError(f"gateway not ready; see {self.log_path}")

    def pids(self) -> list[int]:
        assert self.proc is not None
        return process_tree(self.proc.pid)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


# -- sampling ------------------------------------------------------------------------------


@dataclasses.dataclass
class Sample:
    t: float
    lag_s: float
    queued: int
    upstream_connections: int
    platform_frames: int
    platform_connections: int
    forwarded_confirmed: int
    retries: int
    open_files_total: int
    open_files_max_process: int
    gateway_cpu_s: float
    gateway_rss_kb: int
    device_connections: int


class Sampler(threading.Thread):
    def __init__(self, gateway: Gateway, platform: Platform) -> None:
        super().__init__(daemon=True)
        self.gateway = gateway
        self.platform = platform
        self.samples: list[Sample] = []
        self.t0 = time.monotonic()
        self._stop_event = threading.Event()

    def take(self) -> Sample:
        pids = self.gateway.pids()
        m: dict[str, float] = {}
        with contextlib.suppress(OSError, ValueError):
            m = scrape(self.gateway.metrics_port)
        _, counts = self.platform.ask("counts")
        per_process = [open_files([p]) for p in pids]
        return Sample(
            t=time.monotonic() - self.t0,
            lag_s=metric_sum(m, "hj212_forward_lag_seconds"),
            queued=int(metric_sum(m, "hj212_forward_queued_frames")),
            upstream_connections=int(metric_sum(m, "hj212_forward_connections")),
            platform_frames=int(counts["frames"]),
            platform_connections=int(counts["connections"]),
            forwarded_confirmed=int(metric_sum(m, "hj212_forward_confirmed_total")),
            retries=int(metric_sum(m, "hj212_forward_retries_total")),
            open_files_total=sum(per_process),
            open_files_max_process=max(per_process, default=0),
            gateway_cpu_s=cpu_seconds(pids),
            gateway_rss_kb=rss_kb(pids),
            device_connections=int(metric_sum(m, "hj212_connections_open")),
        )

    def run(self) -> None:
        while not self._stop_event.is_set():
            with contextlib.suppress(Exception):
                self.samples.append(self.take())
            self._stop_event.wait(SAMPLE_S)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


# -- checking ------------------------------------------------------------------------------


async def outbox_by_mn(dsn: str) -> tuple[dict[str, list[bytes]], dict[str, int]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT mn, digest, outcome FROM hj212.forward_outbox WHERE upstream = $1 ORDER BY id",
            UPSTREAM,
        )
    finally:
        await conn.close()
    out: dict[str, list[bytes]] = {}
    outcomes: dict[str, int] = {}
    for r in rows:
        out.setdefault(r["mn"], []).append(bytes(r["digest"]))
        key = r["outcome"] or "pending"
        outcomes[key] = outcomes.get(key, 0) + 1
    return out, outcomes


def compare(queued: dict[str, list[bytes]], got: dict[str, list[bytes]]) -> dict[str, int]:
    """Per MN: frames missing at the platform, received twice, received out of order, and
    received without being queued."""
    missing = twice = disorder = unknown = 0
    for mn in set(queued) | set(got):
        want, have = queued.get(mn, []), got.get(mn, [])
        want_set = set(want)
        seen: set[bytes] = set()
        order: list[bytes] = []
        for d in have:
            if d in seen:
                twice += 1
                continue
            seen.add(d)
            if d not in want_set:
                unknown += 1
                continue
            order.append(d)
        missing += len(want_set - seen)
        if order != [d for d in want if d in seen]:
            disorder += 1
    return {"missing": missing, "twice": twice, "out_of_order_devices": disorder,
            "not_queued": unknown}  # fmt: skip


# -- the run -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    platform = Platform()
    platform.start()
    with throwaway_database(args.admin_dsn) as dsn, tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "forward.toml"
        gateway_config(config, platform.port, args)
        log_path = Path(f"/tmp/hj212-forward-bench-{os.getpid()}.log")
        gw = Gateway(dsn, config, args.workers, log_path)
        gw.start()
        sampler = Sampler(gw, platform)
        local_now = int(time.time()) + 8 * 3_600
        cfg = RunConfig(
            host="127.0.0.1",
            port=gw.port,
            fleet=FleetConfig(devices=args.devices, seed=args.seed),
            sim_start=local_now,
            mode="steady",
            duration_s=args.duration,
            speed=args.speed,
            over_time_s=10.0,
        )
        stats_box: list[SimStats] = []
        sim = threading.Thread(
            target=lambda: stats_box.append(run_processes(cfg, processes_needed(args.devices))),
            daemon=True,
        )
        try:
            sampler.start()
            sim.start()
            # The schedule starts once every unit has connected: time the cut from the
            # first frame the platform records.
            while sim.is_alive() and platform.ask("counts")[1]["frames"] == 0:
                time.sleep(0.2)
            t_load = time.monotonic()
            time.sleep(max(0.0, args.cut_at - (time.monotonic() - t_load)))
            cut_at = time.monotonic() - sampler.t0
            _, frames_before_cut = platform.ask("cut")
            time.sleep(args.cut_for)
            restore_at = time.monotonic() - sampler.t0
            platform.ask("restore")
            sim.join(args.duration + 600)
            sim_done_at = time.monotonic() - sampler.t0
            drained_at = None
            deadline = time.monotonic() + DRAIN_MAX_S
            quiet = 0
            while time.monotonic() < deadline:
                m = scrape(gw.metrics_port)
                left = metric_sum(m, "hj212_forward_queued_frames") + metric_sum(
                    m, "hj212_write_queue_rows"
                ) + metric_sum(m, "hj212_spool_rows")  # fmt: skip
                lag = metric_sum(m, "hj212_forward_lag_seconds")
                quiet = quiet + 1 if left == 0 and lag == 0 else 0
                if quiet >= 3:  # three scrapes a second apart: the 5 s count caught up too
                    drained_at = time.monotonic() - sampler.t0
                    break
                time.sleep(1.0)
            time.sleep(1.0)  # the last confirmations reach the outbox (flushed every 0.2 s)
            sampler.stop()
            final = scrape(gw.metrics_port)
            _, got, counts = platform.ask("dump")
            queued, outcomes = asyncio.run(outbox_by_mn(dsn))
        finally:
            sampler.stop()
            code = gw.stop()
            platform.stop()
    samples = sampler.samples
    stats = stats_box[0] if stats_box else SimStats()
    verdict = compare(queued, got)
    recovery = next(
        (s.t for s in samples if s.t > restore_at and s.platform_frames > frames_before_cut), None
    )
    caught_up = next(
        (s.t for s in samples if s.t > restore_at and s.lag_s < 5.0 and s.queued < 1_000), None
    )
    return {
        "command": command_line("benchmarks/forward_fleet.py", None),
        "gateway_command": " ".join(gw.cmd).replace(dsn, "<dsn>"),
        "gateway_exit_code": code,
        "gateway_log": str(log_path),
        "machine": machine(),
        "devices": args.devices,
        "workers": args.workers,
        "duration_s": args.duration,
        "cut_at_s": cut_at,
        "cut_for_s": args.cut_for,
        "restore_at_s": restore_at,
        "sim_done_at_s": sim_done_at,
        "drained_at_s": drained_at,
        "first_frame_after_restore_s": None if recovery is None else recovery - restore_at,
        "caught_up_after_restore_s": None if caught_up is None else caught_up - restore_at,
        "frames_sent_by_units": stats.frames_sent,
        "frames_queued_for_upstream": sum(len(v) for v in queued.values()),
        "frames_recorded_by_platform": counts["frames"],
        "outbox_outcomes": outcomes,
        "check": verdict,
        "all_delivered": verdict["missing"] == 0 and outcomes.get("pending", 0) == 0,
        "lag_peak_s": max((s.lag_s for s in samples), default=0.0),
        "queued_peak": max((s.queued for s in samples), default=0),
        "upstream_connections_peak": max((s.upstream_connections for s in samples), default=0),
        "platform_connections_peak": counts["connections_peak"],
        "platform_connections_accepted": counts["accepted"],
        "device_connections_peak": max((s.device_connections for s in samples), default=0),
        "open_files_peak_total": max((s.open_files_total for s in samples), default=0),
        "open_files_peak_one_process": max(
            (s.open_files_max_process for s in samples), default=0
        ),
        "retries": metric_sum(final, "hj212_forward_retries_total"),
        "connect_failures": metric_sum(final, "hj212_forward_connect_failures_total"),
        "confirmed_9014": _confirmed(final, "9014"),
        "confirmed_write": _confirmed(final, "write"),
        "gateway_cpu_s": (samples[-1].gateway_cpu_s - samples[0].gateway_cpu_s) if samples else 0.0,
        "gateway_rss_kb_peak": max((s.gateway_rss_kb for s in samples), default=0),
        "sim": {
            "frames_sent": stats.frames_sent,
            "replied": stats.replied,
            "expected_replies": stats.expected_replies,
            "resends": stats.resends,
            "gave_up": stats.gave_up,
        },
        "samples": [dataclasses.asdict(s) for s in samples],
    }  # fmt: skip


def _confirmed(metrics: dict[str, float], by: str) -> float:
    return metrics.get(f'hj212_forward_confirmed_total{{by="{by}",upstream="{UPSTREAM}"}}', 0.0)


def timeline(samples: list[dict[str, Any]], every: float) -> list[tuple[str, ...]]:
    out = []
    next_t = 0.0
    for s in samples:
        if s["t"] + 1e-9 < next_t:
            continue
        next_t = s["t"] + every
        out.append(
            (
                f"{s['t']:.0f}",
                fmt(s["lag_s"], 1),
                fmt(s["queued"]),
                fmt(s["upstream_connections"]),
                fmt(s["platform_connections"]),
                fmt(s["platform_frames"]),
                fmt(s["retries"]),
                fmt(s["open_files_max_process"]),
                fmt(s["open_files_total"]),
            )
        )
    return out


def render(d: dict[str, Any]) -> str:
    v = d["check"]
    drained = d["drained_at_s"]
    after_sim = None if drained is None else drained - d["sim_done_at_s"]
    outcomes = ", ".join(f"{k} {n:,}" for k, n in sorted(d["outbox_outcomes"].items()))
    first_after = fmt(d["first_frame_after_restore_s"], 1)
    caught_up = fmt(d["caught_up_after_restore_s"], 1)
    files_one = fmt(d["open_files_peak_one_process"])
    files_all = fmt(d["open_files_peak_total"])
    sim = d["sim"]
    rows = [
        ("units; gateway workers", f"{d['devices']:,}; {d['workers']}"),
        ("run", f"{d['duration_s']:.0f} s steady schedule at real speed"),
        (
            "upstream cut",
            f"from {d['cut_at_s']:.0f} s to {d['restore_at_s']:.0f} s ({d['cut_for_s']:.0f} s):"
            " listener closed, every connection reset",
        ),
        ("frames queued for the upstream (outbox rows)", fmt(d["frames_queued_for_upstream"])),
        ("frames recorded by the platform", fmt(d["frames_recorded_by_platform"])),
        (
            "missing / received twice / devices out of order / not queued",
            f"{v['missing']} / {v['twice']} / {v['out_of_order_devices']} / {v['not_queued']}",
        ),
        ("outbox outcomes", outcomes),
        ("all delivered", "yes" if d["all_delivered"] else "NO"),
        ("lag peak (oldest undelivered frame)", f"{fmt(d['lag_peak_s'], 1)} s"),
        ("frames waiting, peak", fmt(d["queued_peak"])),
        ("first frame after restore; caught up (lag < 5 s)", f"{first_after} s; {caught_up} s"),
        ("outbox empty after the units stopped", f"{fmt(after_sim, 1)} s"),
        (
            "retries; failed connection attempts",
            f"{fmt(d['retries'])}; {fmt(d['connect_failures'])}",
        ),
        (
            "confirmed by 9014 / on write",
            f"{fmt(d['confirmed_9014'])} / {fmt(d['confirmed_write'])}",
        ),
        (
            "upstream connections peak (gateway; platform)",
            f"{fmt(d['upstream_connections_peak'])}; {fmt(d['platform_connections_peak'])} "
            f"({fmt(d['platform_connections_accepted'])} accepted in all)",
        ),
        ("device connections peak", fmt(d["device_connections_peak"])),
        (
            "gateway open files peak: one process; all processes",
            f"{files_one} (limit {FILE_LIMIT:,}); {files_all}",
        ),
        (
            "gateway CPU; RSS peak",
            f"{fmt(d['gateway_cpu_s'], 1)} s; {fmt(d['gateway_rss_kb_peak'] / 1024, 1)} MB",
        ),
        (
            "units: frames sent; replies expected / received; resends; gave up",
            f"{fmt(sim['frames_sent'])}; {fmt(sim['expected_replies'])} / "
            f"{fmt(sim['replied'])}; {fmt(sim['resends'])}; {fmt(sim['gave_up'])}",
        ),
    ]
    header = ("s", "lag s", "waiting", "gw upstream conns", "platform conns", "platform frames",
              "retries", "files (max process)", "files (all)")  # fmt: skip
    return "\n".join(
        [
            f"# Forwarding benchmark: {d['devices']:,} units, per-device mode, upstream cut "
            f"for {d['cut_for_s']:.0f} s",
            "",
            f"`{d['command']}` (commit {d['machine']['commit']}, {d['machine']['cpus']} CPUs, "
            f"Python {d['machine']['python']}). Gateway: `{d['gateway_command']}`. Loopback "
            "only; gateway, PostgreSQL, simulator and fake platform share the machine.",
            "",
            table(("figure", "value"), rows),
            "",
            "Timeline:",
            "",
            table(header, timeline(d["samples"], max(1.0, d["duration_s"] / 24))),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=12_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--duration", type=float, default=240.0)
    p.add_argument("--speed", type=float, default=1.0)
    p.add_argument("--cut-at", type=float, default=60.0)
    p.add_argument("--cut-for", type=float, default=60.0)
    p.add_argument(
        "--retry-max",
        type=float,
        default=10.0,
        help="forward.retry_max_s (the probe interval while the platform is down)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--admin-dsn", default=ADMIN_DSN)
    p.add_argument("--tag", default="", help="suffix of the result file names")
    args = p.parse_args(argv)
    data = run(args)
    report = render(data)
    print(report)
    name = "forward-fleet" + (f"-{args.tag}" if args.tag else "")
    md, js = write_report(name, report, data)
    print(f"written: {md} {js}")
    return 0 if data["all_delivered"] and data["check"]["twice"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
