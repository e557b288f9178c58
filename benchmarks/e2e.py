"""End-to-end benchmark: simulated DAUs over real TCP into a PostgreSQL-backed gateway.

Run:  .venv/bin/python benchmarks/e2e.py [--devices 1000] [--mode backfill-storm]
          [--history-hours 24] [--speed 1] [--duration 180] [--processes 1]
          [--admin-dsn postgresql://postgres@127.0.0.1:5432/postgres]

What it does, all on this machine (loopback only):

1. creates a throwaway database ``hj212_bench_<random>`` (dropped at the end);
2. starts the gateway as a subprocess (``hj212-gateway serve --dsn ... --port P
   --metrics-port M``), waits for ``/readyz``;
3. drives it with the simulator (``gateway.sim``, in its own process): by default a
   backfill storm, every unit sending its last 24 hourly records at once and waiting for
   each reply like a real DAU, which measures what the whole path sustains;
   ``--mode steady --speed X`` measures an offered load instead;
4. samples the gateway's CPU and RSS from ``/proc`` while it runs, counts the rows that
   reached the database and compares them with the distinct rows the simulator sent;
5. measures, in the same run, two raw references over the same traffic:
   a. a minimal uvloop ``Protocol`` server that only splits the same bytes on CR LF
      (100 connections, 64 KiB writes: the socket-reading ceiling);
   b. plain asyncpg COPY of the same rows (decoded by the gateway's own decoder and row
      builder) into tables shaped like the gateway's (same columns, keys and indexes),
      in 5,000-row batches, one transaction each: the database ceiling;
6. prints the report and writes ``benchmarks/results/<date>-e2e.md`` and ``.json``.

Figures on this 2-vCPU VM move by up to 30 % between runs (performance.md): compare the
ratios measured in the same run, not figures across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg

from gateway.sim import FleetConfig, RunConfig, SimStats, make_fleet, run_processes, summary
from gateway.sim.content import build_frames, qn_text
from gateway.sim.schedule import Event, due, history, streams
from protocol import Frame, FrameBuffer, ProtocolError, decode, profile_for_version
from storage.base import Entry, FrameRow
from storage.postgres import FRAME_COLUMNS, INFO_COLUMNS, READING_COLUMNS
from storage.rows import entry_for_packet

ROOT: Final = Path(__file__).resolve().parents[1]
RESULTS: Final = ROOT / "benchmarks" / "results"
ADMIN_DSN: Final = "postgresql://postgres@127.0.0.1:5432/postgres"

READY_TIMEOUT_S: Final = 60.0
"""The gateway must answer /readyz within this (migrations on an empty database take ~1 s)."""
STOP_TIMEOUT_S: Final = 60.0
"""SIGTERM drains the write queue (10 s deadline by default); then it is killed."""
DRAIN_STALL_S: Final = 60.0
"""After the simulator ends, the gateway's write queue and local spool must keep
shrinking: no progress for this long ends the wait (the counts then show the gap)."""
DRAIN_MAX_S: Final = 1_800.0
"""...and they must be empty within this, whatever the progress (a spool of a few
million rows drains in a few minutes here)."""
SAMPLE_S: Final = 0.5
"""/proc sampling period of the gateway's CPU, RSS and open files."""
LINE_CONNECTIONS: Final = 100
"""Connections of the raw line-reading reference (performance.md section 1a)."""
LINE_WRITE_BYTES: Final = 65_536
"""Write size of the raw line-reading reference (bulk arrival: the reading ceiling)."""
LINE_TIMEOUT_S: Final = 120.0
"""The raw line server gives up if the expected bytes have not all arrived by then."""
COPY_BATCH_ROWS: Final = 5_000
"""Value rows per COPY transaction in the database reference: the gateway's batch size
(storage.batch_rows, performance.md section 4)."""
REFERENCE_FRAMES_MAX: Final = 300_000
"""Frames the raw references replay at most (a sample of whole units beyond): enough for
a rate, and their decoded rows (~3 M) still fit in memory comfortably."""
_EPOCH_2000_US: Final = 946_684_800_000_000
_SHANGHAI_US: Final = 8 * 3_600 * 1_000_000


# -- database ---------------------------------------------------------------------------


def _dsn_for(admin_dsn: str, name: str) -> str:
    base, _, _ = admin_dsn.rpartition("/")
    return f"{base}/{name}"


@contextlib.contextmanager
def throwaway_database(admin_dsn: str) -> Iterator[str]:
    """A fresh database for one run, dropped afterwards; yields its DSN."""
    name = f"hj212_bench_{secrets.token_hex(4)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield _dsn_for(admin_dsn, name)
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def count_rows(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        out = {}
        for table in ("reading", "info", "frame"):
            out[table] = int(await conn.fetchval(f"SELECT count(*) FROM hj212.{table}"))
        return out
    finally:
        await conn.close()


async def server_info(dsn: str) -> tuple[str, int | None]:
    """(server version, postmaster pid when the cluster runs on this machine and its
    pid file is readable: its process tree is sampled for CPU)."""
    conn = await asyncpg.connect(dsn)
    try:
        version = str(await conn.fetchval("SHOW server_version"))
        try:
            data_dir = str(await conn.fetchval("SHOW data_directory"))
        except asyncpg.PostgresError:
            return version, None
    finally:
        await conn.close()
    try:
        pid = int((Path(data_dir) / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return version, None
    return version, pid


# -- the gateway process -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            kids.append(int(entry))
    return kids


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (worker processes of ``serve --workers``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += _children(p)
    return out


_TICK: Final = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / _TICK


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def open_files(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{pid}/fd"))
    return total


def _http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), ""


def scrape(port: int) -> dict[str, float]:
    """``/metrics`` as {'name{labels}': value}."""
    _, text = _http_get(port, "/metrics")
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[key] = float(value)
    return out


def metric_sum(metrics: dict[str, float], name: str) -> float:
    """Sum of every series of ``name`` (all label sets)."""
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


def metric_deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Counters (and histogram sums and counts) that moved between two scrapes."""
    out = {}
    for key, value in sorted(after.items()):
        name = key.split("{", 1)[0]
        if name.endswith(("_total", "_sum", "_count")):
            delta = value - before.get(key, 0.0)
            if delta:
                out[key] = delta
    return out


PROFILE_WRAPPER: Final = """
import cProfile, sys, time
from gateway.cli import main
out = sys.argv[1]
# CPU time, not wall time: the event loop's idle wait then costs nothing.
profile = cProfile.Profile(time.process_time)
try:
    code = profile.runcall(main, sys.argv[2:])
finally:
    profile.dump_stats(out)  # serve returns after SIGTERM has drained the queue
sys.exit(code)
"""


class GatewayProcess:
    """``hj212-gateway serve`` against ``dsn`` on free loopback ports."""

    def __init__(
        self, dsn: str, *, workers: int | None, log_path: Path, profile: Path | None = None
    ) -> None:
        self.dsn = dsn
        self.workers = workers
        self.profile = profile
        self.port = free_port()
        self.metrics_port = free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        # Its own working directory and spool: a spool directory is locked by the
        # gateway that uses it, and another gateway may run from the checkout.
        self.workdir = Path(tempfile.mkdtemp(prefix="hj212-bench-"))

    def command(self) -> list[str]:
        exe = Path(sys.executable).with_name("hj212-gateway")
        base = [str(exe)] if exe.exists() else [sys.executable, "-m", "gateway"]
        if self.profile is not None:
            base = [sys.executable, "-c", PROFILE_WRAPPER, str(self.profile.resolve())]
        cmd = [
            *base,
            "serve",
            "--dsn",
            self.dsn,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--metrics-port",
            str(self.metrics_port),
            "--log-level",
            "warning",
        ]
        if self.workers is not None:
            cmd += ["--workers", str(self.workers)]
        return cmd

    def start(self) -> None:
        env = dict(os.environ, HJ212_STORAGE__SPOOL_DIR=str(self.workdir / "spool"))
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, env=env
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited early; see {self.log_path}")
            with contextlib.suppress(OSError):
                if _http_get(self.metrics_port, "/readyz", 1.0)[0] == 200:
                    return
            time.sleep(0.2)
        self.stop()  # never leave it (and its workers) running behind a failed benchmark
        raise RuntimeError(f"gateway not ready after {READY_TIMEOUT_S} s; see {self.log_path}")

    @property
    def pids(self) -> list[int]:
        assert self.proc is not None
        return process_tree(self.proc.pid)

    def wait_drained(self) -> bool:
        """True once the write queue and the local spool (rows acknowledged to devices
        but not yet in PostgreSQL) are both empty on two scrapes in a row."""
        start = last_progress = time.monotonic()
        best = float("inf")
        empty = 0
        while time.monotonic() - start < DRAIN_MAX_S:
            m = scrape(self.metrics_port)
            left = metric_sum(m, "hj212_write_queue_rows") + metric_sum(m, "hj212_spool_rows")
            if left == 0:
                empty += 1
                if empty >= 2:
                    return True
            else:
                empty = 0
            if left < best:
                best, last_progress = left, time.monotonic()
            elif time.monotonic() - last_progress > DRAIN_STALL_S:
                return False
            time.sleep(0.25)
        return False

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
        shutil.rmtree(self.workdir, ignore_errors=True)
        return self.proc.returncode


@dataclasses.dataclass
class Sample:
    t: float
    cpu_s: float
    rss_kb: int
    fds: int
    pg_cpu_s: float = 0.0
    """CPU of the whole PostgreSQL cluster (postmaster and every backend)."""
    sim_cpu_s: float = 0.0
    """CPU of the simulator processes (this benchmark's children other than the gateway)."""
    conns: int = 0
    """hj212_connections_open at the time."""
    frames: int = 0
    """hj212_frames_total (all labels) at the time."""
    reply_s: float = 0.0
    """hj212_reply_latency_seconds_sum (with ``replies``: the mean over an interval)."""
    replies: int = 0
    batch_s: float = 0.0
    """hj212_batch_write_seconds_sum (with ``batches``)."""
    batches: int = 0
    upserts: int = 0
    """Batches written on the upsert path (resends or old data in the batch)."""
    queue_rows: int = 0
    spool_rows: int = 0
    """Rows acknowledged to devices (durable in the local spool) not yet in PostgreSQL."""


class Sampler(threading.Thread):
    """Samples CPU, RSS and open files of the gateway's process tree, and its open
    connections and frame count from /metrics, every ``period`` seconds until stopped."""

    def __init__(
        self, gateway: GatewayProcess, period: float = SAMPLE_S, postmaster: int | None = None
    ) -> None:
        super().__init__(daemon=True)
        self.gateway = gateway
        self.period = period
        self.postmaster = postmaster
        self.samples: list[Sample] = []
        self._stop_event = threading.Event()

    def take(self) -> Sample:
        pids = self.gateway.pids
        t, cpu, rss, fds = time.monotonic(), cpu_seconds(pids), rss_kb(pids), open_files(pids)
        pg = cpu_seconds(process_tree(self.postmaster)) if self.postmaster else 0.0
        me = os.getpid()
        sim = cpu_seconds([p for p in process_tree(me) if p != me and p not in pids])
        m: dict[str, float] = {}
        with contextlib.suppress(OSError, ValueError):
            m = scrape(self.gateway.metrics_port)
        return Sample(
            t,
            cpu,
            rss,
            fds,
            pg,
            sim,
            conns=int(metric_sum(m, "hj212_connections_open")),
            frames=int(metric_sum(m, "hj212_frames_total")),
            reply_s=metric_sum(m, "hj212_reply_latency_seconds_sum"),
            replies=int(metric_sum(m, "hj212_reply_latency_seconds_count")),
            batch_s=metric_sum(m, "hj212_batch_write_seconds_sum"),
            batches=int(metric_sum(m, "hj212_batch_write_seconds_count")),
            upserts=int(m.get('hj212_batches_total{path="upsert"}', 0)),
            queue_rows=int(metric_sum(m, "hj212_write_queue_rows")),
            spool_rows=int(metric_sum(m, "hj212_spool_rows")),
        )

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append(self.take())
            self._stop_event.wait(self.period)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10.0)


TIMELINE_ROWS: Final = 16
"""Intervals the report's timeline shows at most (the JSON keeps every sample)."""


def timeline(samples: list[Sample], rows: int = TIMELINE_ROWS) -> list[tuple[str, ...]]:
    """Per interval: frames/s, gateway reply latency, batch time and path, queue, CPU."""
    moving = [s for s in samples if s.frames > samples[0].frames] if samples else []
    if len(moving) < 2:
        return []
    first = samples.index(moving[0]) - 1
    span = samples[max(0, first) :]
    step = max(1, -(-(len(span) - 1) // rows))
    out: list[tuple[str, ...]] = []
    t0 = span[0].t
    for a, b in zip(span[::step], span[step::step], strict=False):
        dt_s = b.t - a.t
        replies = b.replies - a.replies
        batches = b.batches - a.batches
        out.append(
            (
                f"{a.t - t0:.0f}-{b.t - t0:.0f}",
                f"{(b.frames - a.frames) / dt_s:,.0f}",
                f"{1000 * (b.reply_s - a.reply_s) / replies:.0f}" if replies else "-",
                f"{1000 * (b.batch_s - a.batch_s) / batches:.0f}" if batches else "-",
                f"{b.upserts - a.upserts}/{batches}",
                f"{b.queue_rows:,}",
                f"{b.spool_rows:,}",
                f"{(b.cpu_s - a.cpu_s) / dt_s:.2f}",
                f"{(b.pg_cpu_s - a.pg_cpu_s) / dt_s:.2f}",
                f"{b.conns:,}",
            )
        )
    return out


TIMELINE_HEADER: Final = (
    "seconds",
    "frames/s",
    "reply ms (gateway)",
    "batch ms",
    "upsert/batches",
    "queue rows",
    "spool rows",
    "gateway cores",
    "PostgreSQL cores",
    "connections",
)


def load_window(samples: list[Sample]) -> dict[str, float] | None:
    """CPU of the gateway while frames were flowing: from the last sample before the
    frame counter moved to the first sample at its final value."""
    if len(samples) < 2:
        return None
    final = samples[-1].frames
    start = next((i for i, s in enumerate(samples) if s.frames > samples[0].frames), None)
    end = next((i for i, s in enumerate(samples) if s.frames == final), None)
    if start is None or end is None:
        return None
    a, b = samples[max(0, start - 1)], samples[end]
    if b.t <= a.t or b.frames <= a.frames:
        return None
    cpu = b.cpu_s - a.cpu_s
    pg = b.pg_cpu_s - a.pg_cpu_s
    sim = b.sim_cpu_s - a.sim_cpu_s
    seconds, frames = b.t - a.t, b.frames - a.frames
    return {
        "seconds": seconds,
        "frames": frames,
        "cpu_s": cpu,
        "cpu_cores": cpu / seconds,
        "cpu_us_per_frame": cpu / frames * 1e6,
        "pg_cpu_cores": pg / seconds,
        "pg_cpu_us_per_frame": pg / frames * 1e6,
        "sim_cpu_cores": sim / seconds,
        "frames_per_s": frames / seconds,
    }


# -- the same traffic, offline ----------------------------------------------------------


def offline_frames(cfg: RunConfig, load_s: float) -> list[list[bytes]]:
    """Per unit, the frames its schedule produced during the ``load_s`` seconds the run's
    load phase lasted (and its history in a backfill storm), built exactly as the
    simulator builds them."""
    out = []
    end = cfg.sim_start + int(load_s * cfg.speed)
    for spec in make_fleet(cfg.fleet):
        ms = [cfg.sim_start * 1000]

        def next_qn(ms: list[int] = ms) -> str:
            ms[0] += 1
            return qn_text(ms[0])

        events: list[Event] = []
        if cfg.mode == "backfill-storm":
            events += history(cfg.sim_start, cfg.history_hours)
        events += due(streams(spec), cfg.sim_start, end)
        frames: list[bytes] = []
        seed = cfg.fleet.seed
        for e in events:
            built = build_frames(spec, seed, e.cn, e.data_time, next_qn, history=e.history)
            frames.extend(f.data for f in built)
        out.append(frames)
    return out


def entries_for(frames: list[bytes]) -> list[Entry]:
    """What the gateway stores for these frames (its own decoder and row builder), each
    row key once: the reference writes each distinct row once, like the gateway."""
    now_us = time.time_ns() // 1000
    seen: set[tuple[Any, ...]] = set()
    out = []
    for raw in frames:
        for item in FrameBuffer(lenient=True).feed(raw):
            if not isinstance(item, Frame):
                continue
            try:
                packet = decode(item)
            except ProtocolError:
                continue
            row = FrameRow(now_us, "127.0.0.1:0", 0, packet.mn, packet.st, packet.cn,
                           packet.qn, True, None, tuple(q.value for q in packet.quirks),
                           item.raw)  # fmt: skip
            entry = entry_for_packet(
                packet,
                row,
                utc_offset_us=_SHANGHAI_US,
                profile=profile_for_version(packet.version),
            )
            readings = [
                r for r in entry.readings if (r.mn, r.cn, r.data_time_us, r.code) not in seen
            ]
            seen.update((r.mn, r.cn, r.data_time_us, r.code) for r in readings)
            infos = [
                r
                for r in entry.infos
                if ("i", r.mn, r.cn, r.data_time_us, r.pol_id, r.info_code) not in seen
            ]
            seen.update(("i", r.mn, r.cn, r.data_time_us, r.pol_id, r.info_code) for r in infos)
            out.append(Entry(row, readings, infos))
    return out


# -- raw reference a: uvloop line reading -------------------------------------------------


def _line_server(port_out: Any, result_out: Any, expect_bytes: int) -> None:
    """A uvloop Protocol server that only splits on CR LF and counts (separate process)."""
    import uvloop

    state = {"lines": 0, "bytes": 0, "t0": 0.0, "cpu0": 0.0}

    async def main() -> None:
        done = asyncio.Event()

        class Lines(asyncio.Protocol):
            def __init__(self) -> None:
                self.tail = b""

            def data_received(self, data: bytes) -> None:
                if not state["bytes"]:
                    state["t0"] = time.perf_counter()
                    state["cpu0"] = time.process_time()
                parts = (self.tail + data).split(b"\r\n")
                self.tail = parts.pop()
                state["lines"] += len(parts)
                state["bytes"] += len(data)
                if state["bytes"] >= expect_bytes:
                    done.set()

        loop = asyncio.get_running_loop()
        server = await loop.create_server(Lines, "127.0.0.1", 0, backlog=1024)
        port_out.put(server.sockets[0].getsockname()[1])
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LINE_TIMEOUT_S):
                await done.wait()
        wall = time.perf_counter() - state["t0"]
        cpu = time.process_time() - state["cpu0"]
        server.close()
        result_out.put({"lines": state["lines"], "bytes": state["bytes"], "wall_s": wall,
                        "cpu_s": cpu})  # fmt: skip

    uvloop.run(main())


async def _blast(port: int, chunks: list[bytes]) -> None:
    async def one(data: bytes) -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in range(0, len(data), LINE_WRITE_BYTES):
            writer.write(data[i : i + LINE_WRITE_BYTES])
            await writer.drain()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    await asyncio.gather(*(one(c) for c in chunks if c))


def raw_line_reference(frames: list[bytes]) -> dict[str, float]:
    """Lines/s and CPU per line of a bare uvloop server reading ``frames``."""
    import multiprocessing as mp

    import uvloop

    ctx = mp.get_context("spawn")
    port_q: Any = ctx.Queue()
    result_q: Any = ctx.Queue()
    lanes = [b"".join(frames[i::LINE_CONNECTIONS]) for i in range(LINE_CONNECTIONS)]
    total = sum(len(c) for c in lanes)
    proc = ctx.Process(target=_line_server, args=(port_q, result_q, total))
    proc.start()
    try:
        port = port_q.get(timeout=30)
        uvloop.run(_blast(port, lanes))
        result: dict[str, float] = result_q.get(timeout=LINE_TIMEOUT_S + 10)
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
    lines = len(frames)
    return {
        "frames": lines,
        "lines_split": result["lines"],
        "bytes": result["bytes"],
        "wall_s": result["wall_s"],
        "frames_per_s": lines / result["wall_s"],
        "cpu_us_per_frame": result["cpu_s"] / lines * 1e6,
        "mb_per_s": result["bytes"] / result["wall_s"] / 1e6,
    }


# -- raw reference b: asyncpg COPY of the same rows ----------------------------------------


def _encode_ts(us: int) -> tuple[int]:
    return (us - _EPOCH_2000_US,)


def _decode_ts(value: tuple[int]) -> int:
    return value[0] + _EPOCH_2000_US


async def raw_copy_reference(dsn: str, entries: list[Entry]) -> dict[str, float]:
    """Rows/s of plain COPY of ``entries`` into tables shaped like the gateway's."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.set_type_codec(
            "timestamptz", schema="pg_catalog", encoder=_encode_ts, decoder=_decode_ts,
            format="tuple",
        )  # fmt: skip
        await conn.execute("DROP SCHEMA IF EXISTS bench_ref CASCADE; CREATE SCHEMA bench_ref")
        for table in ("frame", "reading", "info"):
            await conn.execute(f"CREATE TABLE bench_ref.{table} (LIKE hj212.{table} INCLUDING ALL)")
        batches: list[list[Entry]] = [[]]
        rows = 0
        for e in entries:
            if rows >= COPY_BATCH_ROWS:
                batches.append([])
                rows = 0
            batches[-1].append(e)
            rows += len(e.readings) + len(e.infos)
        value_rows = sum(len(e.readings) + len(e.infos) for e in entries)
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        for batch in batches:
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "frame", schema_name="bench_ref", records=[e.frame for e in batch],
                    columns=FRAME_COLUMNS,
                )  # fmt: skip
                await conn.copy_records_to_table(
                    "reading", schema_name="bench_ref",
                    records=[r for e in batch for r in e.readings], columns=READING_COLUMNS,
                )  # fmt: skip
                infos = [r for e in batch for r in e.infos]
                if infos:
                    await conn.copy_records_to_table(
                        "info", schema_name="bench_ref", records=infos, columns=INFO_COLUMNS
                    )
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        await conn.execute("DROP SCHEMA bench_ref CASCADE")
    finally:
        await conn.close()
    return {
        "frames": len(entries),
        "rows": value_rows,
        "batches": len(batches),
        "wall_s": wall,
        "rows_per_s": value_rows / wall,
        "frames_per_s": len(entries) / wall,
        "client_cpu_us_per_row": cpu / max(1, value_rows) * 1e6,
    }


# -- reporting -----------------------------------------------------------------------------


PROFILE_TOP: Final = 25
"""Functions listed from a cProfile run (by own time)."""


def profile_top(path: Path, n: int = PROFILE_TOP) -> list[dict[str, Any]] | None:
    """The ``n`` functions with the most own time in a cProfile file."""
    import pstats

    if not path.exists():
        return None
    st = pstats.Stats(str(path))
    total = st.total_tt or 1.0  # type: ignore[attr-defined]
    rows = []
    for (file, line, func), (_, calls, tottime, cumtime, _) in st.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "function": f"{Path(file).name}:{line}({func})",
                "calls": calls,
                "own_s": tottime,
                "own_share": tottime / total,
                "cum_s": cumtime,
            }
        )
    rows.sort(key=lambda r: -float(r["own_s"]))
    return rows[:n]


def where_time_goes(gw: dict[str, Any]) -> list[tuple[str, str]]:
    """Coarse split from the gateway's own metrics and the CPU samples."""
    m = gw["metrics_delta"]
    rows = []
    window = gw.get("load_window") or {}
    if window:
        rows.append(
            (
                "CPU while frames flowed",
                f"gateway {window['cpu_cores']:.2f} cores "
                f"({window['cpu_us_per_frame']:.0f} µs/frame); PostgreSQL cluster "
                f"{window['pg_cpu_cores']:.2f} cores "
                f"({window['pg_cpu_us_per_frame']:.0f} µs/frame); simulator "
                f"{window['sim_cpu_cores']:.2f} cores",
            )
        )
    copy_b = m.get('hj212_batches_total{path="copy"}', 0)
    upsert_b = m.get('hj212_batches_total{path="upsert"}', 0)
    count = metric_sum(m, "hj212_batch_write_seconds_count")
    if count:
        secs = metric_sum(m, "hj212_batch_write_seconds_sum")
        rows_n = metric_sum(m, "hj212_batch_rows_sum")
        rows.append(
            (
                "database batches",
                f"{count:.0f} ({copy_b:.0f} plain COPY, {upsert_b:.0f} upsert); "
                f"{rows_n / count:,.0f} rows and {1000 * secs / count:.0f} ms each on average; "
                f"{secs:.1f} s writing in total",
            )
        )
    spooled = metric_sum(m, "hj212_spool_appended_rows_total")
    if spooled:
        rows.append(
            (
                "local spool (durable, replied, not yet in PostgreSQL)",
                f"{spooled:,.0f} rows in {metric_sum(m, 'hj212_spool_appended_batches_total'):,.0f}"
                f" batches; {metric_sum(m, 'hj212_spool_drained_rows_total'):,.0f} rows moved "
                f"into PostgreSQL; {gw['catch_up_s']:.0f} s after the run until all were",
            )
        )
    lat_n = metric_sum(m, "hj212_reply_latency_seconds_count")
    if lat_n:
        lat = metric_sum(m, "hj212_reply_latency_seconds_sum") / lat_n
        rows.append(("gateway-side reply latency (mean)", f"{1000 * lat:.0f} ms"))
    return rows


def git_commit() -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            check=True,
        )
        return out.stdout.decode().strip()
    return "unknown"


def command_line(script: str, argv: list[str] | None) -> str:
    return " ".join([script, *(argv if argv is not None else sys.argv[1:])])


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": git_commit(),
    }


def write_report(scenario: str, markdown: str, data: dict[str, Any]) -> tuple[Path, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"{dt.date.today().isoformat()}-{scenario}"
    md, js = RESULTS / f"{stem}.md", RESULTS / f"{stem}.json"
    md.write_text(markdown)
    js.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return md, js


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def pct(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "n/a"
    return f"{100.0 * a / b:.1f} %"


# -- the benchmark ------------------------------------------------------------------------


def _sim_config(args: argparse.Namespace, port: int) -> RunConfig:
    local_now = int(time.time()) + 8 * 3_600
    span = int(args.duration * args.speed)
    start = local_now - span if args.mode != "backfill-storm" else local_now
    over_time = args.over_time or max(2.0, 10.0 / max(1.0, args.speed))
    return RunConfig(
        host="127.0.0.1",
        port=port,
        fleet=FleetConfig(devices=args.devices, seed=args.seed, quirky_share=args.quirky_share),
        sim_start=start,
        mode=args.mode,
        duration_s=args.duration,
        speed=args.speed,
        history_hours=args.history_hours,
        over_time_s=over_time,
    )


def run_gateway_phase(
    make_cfg: Callable[[int], RunConfig],
    processes: int,
    dsn: str,
    *,
    workers: int | None = None,
    sample_s: float = SAMPLE_S,
    postmaster: int | None = None,
    profile: Path | None = None,
    background: Callable[[int], Callable[[], dict[str, Any]]] | None = None,
) -> tuple[RunConfig, dict[str, Any], SimStats]:
    """Start the gateway, run the simulator against it (config from ``make_cfg(port)``),
    wait for its queue to empty, count the rows, stop it. Returns the config, the
    measured figures and the simulator's stats.

    ``background(port)``, when given, starts other load beside the simulator (the fault
    benchmarks' attackers) and returns a function that waits for it to end and returns
    its figures (``figures["background"]``)."""
    log_path = Path(f"/tmp/hj212-bench-gateway-{os.getpid()}.log")
    gw = GatewayProcess(dsn, workers=workers, log_path=log_path, profile=profile)
    gw.start()
    sampler = Sampler(gw, sample_s, postmaster)
    try:
        time.sleep(1.0)  # let start-up allocations settle before the baseline
        base = sampler.take()
        before = scrape(gw.metrics_port)
        sampler.start()
        cfg = make_cfg(gw.port)
        finish_background = background(gw.port) if background is not None else None
        t0 = time.monotonic()
        stats = run_processes(cfg, processes)
        side = finish_background() if finish_background is not None else None
        t1 = time.monotonic()
        drained = gw.wait_drained()
        t2 = time.monotonic()
        end = sampler.take()
        sampler.stop()
        after = scrape(gw.metrics_port)
        stored = asyncio.run(count_rows(dsn))
    finally:
        code = gw.stop()
    samples = sampler.samples
    in_run = [s for s in samples if t0 <= s.t <= t1] or [end]
    load = stats.load_s or (t1 - t0)
    cpu = end.cpu_s - base.cpu_s
    window = load_window([base, *samples, end])
    n = cfg.fleet.devices
    # Every unit connected and silent (the simulator's idle hold): what connections cost.
    idle = [s for s in samples if s.conns >= n and s.frames == base.frames]
    rss_idle = idle[-1].rss_kb if idle else None
    figures: dict[str, Any] = {
        "gateway_command": " ".join(gw.command()).replace(dsn, "<dsn>"),
        "gateway_exit_code": code,
        "gateway_log": str(log_path),
        "queue_drained": drained,
        "run_s": t1 - t0,
        "catch_up_s": t2 - t1,
        "load_s": load,
        "frames_per_s": stats.frames_sent / load,
        "rows_per_s": (stats.rows_reading + stats.rows_info) / load,
        "rows_per_s_into_db": (stats.rows_reading + stats.rows_info) / (load + t2 - t1),
        "cpu_s_run": cpu,
        "cpu_cores_run": cpu / max(1e-9, end.t - base.t),
        "load_window": window,
        "cpu_us_per_frame": (
            window["cpu_us_per_frame"]
            if window
            else cpu / max(1, stats.frames_sent + stats.resends) * 1e6
        ),
        "cpu_cores": window["cpu_cores"] if window else cpu / max(1e-9, end.t - base.t),
        "rss_kb_start": base.rss_kb,
        "rss_kb_idle_connected": rss_idle,
        "marginal_rss_bytes_per_connection": (
            None if rss_idle is None else (rss_idle - base.rss_kb) * 1024 / n
        ),
        "rss_kb_peak": max(s.rss_kb for s in in_run),
        "rss_kb_end": end.rss_kb,
        "open_files_start": base.fds,
        "open_files_peak": max(s.fds for s in in_run),
        "connections_peak": max(s.conns for s in in_run),
        "stored": stored,
        "distinct_sent": {"reading": stats.rows_reading, "info": stats.rows_info},
        "rows_equal": stored["reading"] == stats.rows_reading and stored["info"] == stats.rows_info,
        "metrics_delta": metric_deltas(before, after),
        "background": side,
        "samples": [dataclasses.asdict(s) for s in samples],
        "timeline": timeline([base, *samples, end]),
    }
    return cfg, figures, stats


def references(dsn: str, cfg: RunConfig, load_s: float, limit: int) -> tuple[dict[str, Any], ...]:
    """Both raw references over (up to ``limit`` frames of) the run's traffic."""
    per_unit = offline_frames(cfg, load_s)
    frames = [f for fs in per_unit for f in fs]
    if len(frames) > limit:
        # A sample of whole units keeps each unit's slots together (a unit's rows share
        # its MN, as in the gateway's batches); rates are per frame and per row.
        step = -(-len(frames) // limit)
        frames = [f for fs in per_unit[::step] for f in fs]
    line = raw_line_reference(frames)
    copy = asyncio.run(raw_copy_reference(dsn, entries_for(frames)))
    return line, copy


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=1_000)
    p.add_argument("--mode", choices=("steady", "backfill-storm"), default="backfill-storm")
    p.add_argument("--history-hours", type=int, default=24)
    p.add_argument("--speed", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=180.0, help="real seconds at most")
    p.add_argument("--processes", type=int, default=1, help="simulator processes")
    p.add_argument("--quirky-share", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--over-time", type=float, help="simulated units' reply timeout, s")
    p.add_argument("--workers", type=int, help="pass --workers N to serve (when it exists)")
    p.add_argument("--admin-dsn", default=ADMIN_DSN)
    p.add_argument("--no-write", action="store_true", help="print only, write no files")
    p.add_argument("--json-out", type=Path, help="also write the JSON data here")
    p.add_argument(
        "--profile",
        type=Path,
        help="run the gateway under cProfile, write the stats here and list the hot "
        "functions (profiling slows the gateway: use a separate run for the figures)",
    )
    args = p.parse_args(argv)
    started = dt.datetime.now().astimezone()
    with throwaway_database(args.admin_dsn) as dsn:
        pg_version, postmaster = asyncio.run(server_info(dsn))
        cfg, gw, stats = run_gateway_phase(
            lambda port: _sim_config(args, port),
            args.processes,
            dsn,
            workers=args.workers,
            postmaster=postmaster,
            profile=args.profile,
        )
        line, copy = references(dsn, cfg, gw["load_s"], REFERENCE_FRAMES_MAX)
    sim = summary(stats, {"mode": cfg.mode, "devices": cfg.fleet.devices})
    data = {
        "benchmark": "e2e",
        "started": started.isoformat(timespec="seconds"),
        "command": command_line("benchmarks/e2e.py", argv),
        "machine": {**machine(), "postgresql": pg_version},
        "simulator": sim,
        "gateway": gw,
        "reference_line_reading": line,
        "reference_copy": copy,
        "profile_top": profile_top(args.profile) if args.profile else None,
        "ratios": {
            "frames_per_s_vs_line_reading": gw["frames_per_s"] / line["frames_per_s"],
            "cpu_per_frame_vs_line_reading": gw["cpu_us_per_frame"] / line["cpu_us_per_frame"],
            "rows_per_s_vs_copy": gw["rows_per_s"] / copy["rows_per_s"],
        },
    }
    md = render(data)
    print(md)
    if args.json_out:
        args.json_out.write_text(json.dumps(data, indent=2, default=str) + "\n")
    if not args.no_write:
        paths = write_report("e2e", md, data)
        print(f"written: {paths[0]}, {paths[1]}")
    return 0 if gw["rows_equal"] and sim["ok"] else 1


def table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render(d: dict[str, Any]) -> str:
    sim, gw, line, copy, r = (
        d["simulator"],
        d["gateway"],
        d["reference_line_reading"],
        d["reference_copy"],
        d["ratios"],
    )
    lat = sim["reply_latency_ms"]
    m = d["machine"]
    stored, sent = gw["stored"], gw["distinct_sent"]
    main_rows = [
        (f"frames/s (load phase {gw['load_s']:.1f} s)", fmt(gw["frames_per_s"])),
        ("rows/s (reading + info)", fmt(gw["rows_per_s"])),
        (
            "reply latency p50 / p95 / p99 / max",
            f"{lat['p50']} / {lat['p95']} / {lat['p99']} / {lat['max']} ms",
        ),
        (
            "replies matched / expected (resends)",
            f"{sim['replies']['replied']} / {sim['replies']['expected']} "
            f"({sim['frames']['resends']})",
        ),
        (
            "gateway CPU",
            f"{gw['cpu_cores']:.2f} cores while frames flowed; "
            f"{fmt(gw['cpu_us_per_frame'], 1)} µs per frame",
        ),
        (
            "gateway RSS",
            f"{fmt(gw['rss_kb_start'] / 1024, 1)} MB at start, "
            f"{fmt(gw['rss_kb_peak'] / 1024, 1)} MB peak",
        ),
        (
            "rows stored / distinct sent",
            f"reading {stored['reading']} / {sent['reading']}, "
            f"info {stored['info']} / {sent['info']}",
        ),
    ]
    ref_rows = [
        (
            f"uvloop Protocol, split on CR LF ({LINE_CONNECTIONS} conns, 64 KiB writes)",
            f"{fmt(line['frames_per_s'])} frames/s ({line['mb_per_s']:.0f} MB/s)",
            f"{line['cpu_us_per_frame']:.2f} µs/frame",
            f"throughput {pct(gw['frames_per_s'], line['frames_per_s'])}; "
            f"CPU per frame {r['cpu_per_frame_vs_line_reading']:.0f}x",
        ),
        (
            f"asyncpg COPY of the same rows (tables like hj212's, "
            f"{COPY_BATCH_ROWS}-row transactions)",
            f"{fmt(copy['rows_per_s'])} rows/s",
            f"client {copy['client_cpu_us_per_row']:.2f} µs/row",
            pct(gw["rows_per_s"], copy["rows_per_s"]),
        ),
    ]
    return f"""# End-to-end benchmark ({d["started"]})

`{d["command"]}` (commit {m["commit"]}, {m["cpus"]} CPUs, Python {m["python"]},
PostgreSQL {m["postgresql"]}). Gateway: `{gw["gateway_command"]}`.
Simulator: {sim["devices"]} units, mode {sim["mode"]}, {sim["frames"]["sent"]} frames,
loopback only.

{table(("figure", "value"), main_rows)}

Raw references over the same traffic, measured in the same run:

{table(("reference", "rate", "CPU", "gateway / reference"), ref_rows)}

Where the time goes (gateway metrics and /proc samples of this run):

{table(("what", "measured"), where_time_goes(gw))}
{render_timeline(gw)}{render_profile(d.get("profile_top"))}"""


def render_timeline(gw: dict[str, Any]) -> str:
    rows = [tuple(r) for r in gw.get("timeline") or []]
    if not rows:
        return ""
    return "\nTimeline (from the samples):\n\n" + table(TIMELINE_HEADER, rows) + "\n"


def render_profile(top: list[dict[str, Any]] | None) -> str:
    if not top:
        return ""
    rows = [
        (r["function"], str(r["calls"]), f"{r['own_s']:.2f}", f"{100 * r['own_share']:.1f} %")
        for r in top
    ]
    return (
        "\nHot path (cProfile of the gateway in this run; profiling inflates the times):\n\n"
        + table(("function", "calls", "own s", "share"), rows)
        + "\n"
    )


if __name__ == "__main__":
    sys.exit(main())
