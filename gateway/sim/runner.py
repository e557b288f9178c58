"""Run a simulated fleet in this process or spread over several processes.

One process may hold at most 20,000 open files here (performance.md, ``ulimit -Hn``), so
larger fleets are cut into contiguous slices, one per process. Every process builds the
same fleet from the seed and takes its slice; all connect first, meet at a barrier, then
start their schedules together. Each returns its ``SimStats``; the parent adds them up.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import queue as queue_mod
import threading
import time
from multiprocessing.synchronize import Barrier
from typing import Any, Final

from gateway.sim.client import RunConfig, SliceRun
from gateway.sim.fleet import make_fleet
from gateway.sim.stats import SimStats

SOCKETS_PER_PROCESS_MAX: Final = 19_000
"""Connections one simulator process may hold: the 20,000-file limit less room for the
interpreter, pipes and a reconnecting socket per unit during a storm."""
BARRIER_TIMEOUT_S: Final = 300.0
"""Processes wait this long for each other after connecting (12,000 connects take a few
seconds; a gateway refusing connections makes some processes slow, not the run endless)."""
RESULT_MARGIN_S: Final = 120.0
"""Slack on top of the longest a run can take before the parent stops waiting for a
process's result (process start, connecting, closing)."""


def processes_needed(devices: int, sockets_per_device: int = 1) -> int:
    """The fewest processes that keep each under ``SOCKETS_PER_PROCESS_MAX`` sockets
    (a silent reconnect storm holds two per unit for a while)."""
    return max(1, -(-devices * sockets_per_device // SOCKETS_PER_PROCESS_MAX))


def slices(devices: int, processes: int) -> list[tuple[int, int]]:
    """Contiguous (lo, hi) index ranges, as even as possible, one per process."""
    base, extra = divmod(devices, processes)
    out = []
    lo = 0
    for p in range(processes):
        hi = lo + base + (1 if p < extra else 0)
        out.append((lo, hi))
        lo = hi
    return [s for s in out if s[1] > s[0]]


async def run_in_loop(cfg: RunConfig) -> SimStats:
    """The whole fleet in the running event loop (tests, small runs)."""
    specs = make_fleet(cfg.fleet)
    return await SliceRun(cfg, specs).run()


def _raise_nofile() -> None:
    try:
        import resource  # noqa: PLC0415 (POSIX only)
    except ImportError:  # pragma: no cover
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _worker(cfg: RunConfig, lo: int, hi: int, barrier: Barrier, out: Any) -> None:
    """One simulator process: its slice of the fleet on its own event loop."""
    _raise_nofile()
    specs = make_fleet(cfg.fleet)[lo:hi]

    async def meet() -> None:
        def wait() -> None:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(BARRIER_TIMEOUT_S)

        await asyncio.get_running_loop().run_in_executor(None, wait)

    async def main() -> SimStats:
        return await SliceRun(cfg, specs).run(meet)

    try:
        stats = _run_loop(main)
    except BaseException as exc:  # report, never hang the parent
        stats = SimStats(devices=hi - lo)
        stats.error(f"process for devices {lo}..{hi - 1} failed: {exc!r}")
    out.put(stats)


def _run_loop(main: Any) -> SimStats:
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        result: SimStats = asyncio.run(main())
        return result
    result = uvloop.run(main())
    assert isinstance(result, SimStats)
    return result


def run_processes(cfg: RunConfig, processes: int) -> SimStats:
    """The fleet over ``processes`` spawned processes; blocks until all report."""
    ctx = mp.get_context("spawn")
    parts = slices(cfg.fleet.devices, processes)
    barrier = ctx.Barrier(len(parts))
    results: Any = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(cfg, lo, hi, barrier, results), name=f"hj212-sim-{i}")
        for i, (lo, hi) in enumerate(parts)
    ]
    for p in procs:
        p.start()
    budget = (
        BARRIER_TIMEOUT_S
        + cfg.idle_hold_s
        + cfg.duration_s
        + cfg.drain_deadline_s
        + cfg.settle_s
        + RESULT_MARGIN_S
    )
    deadline = time.monotonic() + budget
    total = SimStats()
    got = 0
    try:
        while got < len(parts):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                part: SimStats = results.get(timeout=min(left, 1.0))
            except queue_mod.Empty:
                if not any(p.is_alive() for p in procs) and results.empty():
                    break
                continue
            total.merge(part)
            got += 1
    finally:
        for p in procs:
            p.join(timeout=10.0)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5.0)
    if got < len(parts):
        total.error(f"{len(parts) - got} simulator process(es) did not report")
        total.devices = cfg.fleet.devices
    return total
