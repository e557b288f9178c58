"""``serve --workers N``: N worker processes sharing the device port, one supervisor.

Why processes: one process here may open at most 20,000 files, so a fleet beyond ~19,000
connections needs several; and each worker gets a core. The workers bind the same port
with SO_REUSEPORT, so the kernel spreads new connections over them.

The supervisor:
- starts the workers (``multiprocessing`` spawn; each runs an ordinary ``Gateway`` with
  its worker number, its metrics on a private loopback port that it reports back);
- serves the public metrics port: ``/metrics`` scrapes every worker and sums the samples
  that share a name and labels, so one scrape shows the whole gateway;
  ``/healthz`` is ok while every worker is alive; ``/readyz`` while every worker is ready;
- restarts a worker that dies (with a backoff, counted in ``hj212_worker_restarts_total``);
- on SIGTERM/SIGINT forwards SIGTERM to every worker, waits for them to drain, exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import signal
import socket
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from config import Settings
from gateway.app import uvloop
from gateway.http import MetricsServer
from gateway.logs import configure_logging, get_logger

T = TypeVar("T")

# A worker that dies within this long of its start is restarted only after a pause that
# doubles up to RESTART_BACKOFF_MAX_S: a worker that cannot start must not spin.
RESTART_BACKOFF_S = 1.0
RESTART_BACKOFF_MAX_S = 30.0
# How long one worker scrape may take before the aggregate is served without it.
SCRAPE_TIMEOUT_S = 5.0
# How often the supervisor checks that its workers are alive.
WATCH_INTERVAL_S = 0.5
# Extra time over the workers' own drain deadline before they are killed.
STOP_MARGIN_S = 10.0
# Metrics whose samples are not summed across workers but take the largest value.
MAX_NOT_SUM = ("hj212_gateway_build_info", "hj212_forward_lag_seconds")


def _worker_main(settings: Settings, worker: int, report: Connection) -> None:
    """Entry point of a worker process (spawned: nothing is inherited but arguments)."""
    from gateway.app import Gateway, run_gateway  # noqa: PLC0415 - in the child only

    configure_logging(settings.log.level, settings.log.format)
    gateway = Gateway(settings, worker=worker)

    def started() -> None:
        report.send(("started", worker, gateway.metrics_port, os.getpid()))

    raise SystemExit(run_gateway(gateway, on_started=started))


@dataclass
class _Worker:
    index: int
    process: BaseProcess | None = None
    metrics_port: int = 0
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = RESTART_BACKOFF_S
    restart_at: float | None = None


@dataclass
class Supervisor:
    settings: Settings
    workers: int
    log: Any = field(default_factory=lambda: get_logger("hj212.supervisor"))

    def __post_init__(self) -> None:
        self._ctx = mp.get_context("spawn")
        self._reports, self._report_sink = self._ctx.Pipe(duplex=False)
        self._slots = [_Worker(i) for i in range(self.workers)]
        self._stopping = False
        self._restarts_total = 0
        self.port = 0
        self.metrics_port = 0

    # -- processes ------------------------------------------------------------------------

    def _worker_settings(self) -> Settings:
        data = self.settings.model_dump()
        data["listen"] = {**data["listen"], "port": self.port, "reuse_port": True, "workers": 1}
        data["metrics"] = {**data["metrics"], "host": "127.0.0.1", "port": 0}
        return Settings(**data)

    def _spawn(self, slot: _Worker) -> None:
        proc = self._ctx.Process(
            target=_worker_main,
            args=(self._worker_settings(), slot.index, self._report_sink),
            name=f"hj212-worker-{slot.index}",
        )
        proc.start()
        slot.process = proc
        slot.metrics_port = 0
        slot.started_at = time.monotonic()
        slot.restart_at = None
        self.log.info("worker started", worker=slot.index, pid=proc.pid)

    def _collect_reports(self) -> None:
        while self._reports.poll():
            kind, index, port, _pid = self._reports.recv()
            if kind == "started":
                self._slots[index].metrics_port = port

    def _watch(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            proc = slot.process
            if slot.restart_at is not None:
                if now >= slot.restart_at and not self._stopping:
                    self._spawn(slot)
                continue
            if proc is None or proc.is_alive() or self._stopping:
                continue
            self._restarts_total += 1
            slot.restarts += 1
            quick = now - slot.started_at < RESTART_BACKOFF_MAX_S
            slot.backoff_s = (
                min(slot.backoff_s * 2, RESTART_BACKOFF_MAX_S) if quick else (RESTART_BACKOFF_S)
            )
            slot.restart_at = now + (slot.backoff_s if quick else 0.0)
            slot.metrics_port = 0
            self.log.error(
                "worker died; restarting",
                worker=slot.index,
                exitcode=proc.exitcode,
                restart_in_s=round(slot.restart_at - now, 2),
            )

    # -- metrics --------------------------------------------------------------------------

    async def _scrape(self, port: int) -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /metrics HTTP/1.0\r\nHost: worker\r\n\r\n")
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
        return data.split(b"\r\n\r\n", 1)[-1].decode()

    async def _path(self, port: int, path: str) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
            await writer.drain()
            status = await reader.readline()
        finally:
            writer.close()
        parts = status.split()
        return int(parts[1]) if len(parts) > 1 else 0

    async def aggregate(self) -> bytes:
        ports = [s.metrics_port for s in self._slots if s.metrics_port]
        results = await asyncio.gather(
            *(_within(SCRAPE_TIMEOUT_S, self._scrape(p)) for p in ports),
            return_exceptions=True,
        )
        texts = [r for r in results if isinstance(r, str)]
        alive = sum(1 for s in self._slots if s.process is not None and s.process.is_alive())
        extra = (
            "# HELP hj212_workers Worker processes alive.\n# TYPE hj212_workers gauge\n"
            f"hj212_workers {alive}\n"
            "# HELP hj212_worker_restarts_total Workers restarted after dying.\n"
            "# TYPE hj212_worker_restarts_total counter\n"
            f"hj212_worker_restarts_total {self._restarts_total}\n"
        )
        return (merge_metrics(texts) + extra).encode()

    async def _ready(self) -> tuple[bool, str]:
        ports = [s.metrics_port for s in self._slots]
        if not all(ports):
            return False, "workers starting"
        codes = await asyncio.gather(
            *(_within(SCRAPE_TIMEOUT_S, self._path(p, "/readyz")) for p in ports),
            return_exceptions=True,
        )
        bad = [i for i, c in enumerate(codes) if c != 200]
        return (not bad, "ready" if not bad else f"workers not ready: {bad}")

    # -- run ------------------------------------------------------------------------------

    async def run(self) -> int:
        self.port = _resolve_port(self.settings.listen.host, self.settings.listen.port)
        http = _AsyncMetricsServer(self)
        if self.settings.metrics.enabled:
            # Bound before any worker starts: a port in use must not leave workers behind.
            try:
                self.metrics_port = await http.start(
                    self.settings.metrics.host, self.settings.metrics.port
                )
            except OSError as exc:
                self.log.error("cannot start: metrics port", error=str(exc))
                return 2
        try:
            return await self._supervise()
        finally:
            self._stopping = True
            await self._stop_workers()
            await http.close()
            self.log.info("gateway stopped")

    async def _supervise(self) -> int:
        """Start the workers, restart any that dies, until SIGTERM or SIGINT (the caller
        stops them)."""
        for slot in self._slots:
            self._spawn(slot)
        self.log.info(
            "gateway listening",
            host=self.settings.listen.host,
            port=self.port,
            metrics_port=self.metrics_port,
            workers=self.workers,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        while not stop.is_set():
            self._collect_reports()
            self._watch()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WATCH_INTERVAL_S):
                    await stop.wait()
        self._stopping = True
        self.log.info("signal received; stopping workers")
        return 0

    async def _stop_workers(self) -> None:
        procs = [s.process for s in self._slots if s.process is not None and s.process.is_alive()]
        for proc in procs:
            if proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown.drain_timeout_s + STOP_MARGIN_S
        while any(p.is_alive() for p in procs) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        for proc in procs:
            if proc.is_alive():
                self.log.error("worker did not stop in time; killing", pid=proc.pid)
                proc.kill()
            proc.join(1.0)


class _AsyncMetricsServer(MetricsServer):
    """The metrics endpoint of the supervisor: bodies computed by awaiting the workers."""

    def __init__(self, supervisor: Supervisor) -> None:
        super().__init__(CollectorRegistry(), lambda: (True, "ok"))
        self._sup = supervisor

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        except ConnectionError:
            writer.close()
            return
        parts = head.split(b"\r\n", 1)[0].split()
        path = parts[1].split(b"?", 1)[0] if len(parts) > 1 else b""
        if path == b"/metrics":
            body = await self._sup.aggregate()
            await self._respond(writer, 200, body, "text/plain; version=0.0.4; charset=utf-8")
        elif path in (b"/healthz", b"/livez"):
            alive = all(s.process is not None and s.process.is_alive() for s in self._sup._slots)
            await self._respond(writer, 200 if alive else 503, b"ok\n" if alive else b"down\n")
        elif path == b"/readyz":
            ok, reason = await self._sup._ready()
            await self._respond(writer, 200 if ok else 503, (reason + "\n").encode())
        else:
            await self._respond(writer, 404, b"not found\n")


async def _within(seconds: float, coro: Awaitable[T]) -> T:
    """``coro`` bounded by ``seconds`` (TimeoutError after), for use under gather."""
    async with asyncio.timeout(seconds):
        return await coro


def _resolve_port(host: str, port: int) -> int:
    """Port 0 means "any free port": pick one here so every worker binds the same."""
    if port:
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host if host not in ("", "0.0.0.0") else "127.0.0.1", 0))
        return int(s.getsockname()[1])


def merge_metrics(texts: Iterable[str]) -> str:
    """Sum samples with the same name and labels over several exposition texts."""
    families: dict[str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    for text in texts:
        for fam in text_string_to_metric_families(text):
            if fam.name.endswith("_created") or fam.type == "unknown":
                continue
            _, _, samples = families.setdefault(fam.name, (fam.type, fam.documentation, {}))
            take_max = fam.name in MAX_NOT_SUM
            for s in fam.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                if take_max:
                    samples[key] = max(samples.get(key, s.value), s.value)
                else:
                    samples[key] = samples.get(key, 0.0) + s.value
    out: list[str] = []
    for name, (kind, doc, samples) in families.items():
        out.append(f"# HELP {name} {doc}")
        out.append(f"# TYPE {name} {kind}")
        for (sample, labels), value in samples.items():
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            out.append(f"{sample}{{{label_text}}} {value!r}" if labels else f"{sample} {value!r}")
    return "\n".join(out) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def run_supervisor(settings: Settings, workers: int) -> int:
    configure_logging(settings.log.level, settings.log.format)
    supervisor = Supervisor(settings, workers)
    runner: Any = uvloop.run if uvloop is not None else asyncio.run
    return int(runner(supervisor.run()))
