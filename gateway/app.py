"""Composition root: builds the store, writer, hub, servers and metrics, and runs them.

Start order: logging -> store (open + migrate) -> writer -> hub -> device listener ->
metrics listener -> periodic tasks. Shutdown (SIGTERM/SIGINT) follows uvicorn's order:
stop accepting, pause every read, flush the queue within ``shutdown.drain_timeout_s``
(replies for rows committed in that time still go out), close the connections, close
the store. Rows still queued at the deadline were never replied to; they are counted and
logged, and the devices resend them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import signal
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import ModuleType
from typing import Any
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry

from config import Settings
from gateway.commands import CommandDispatcher
from gateway.coverage_metrics import COVERAGE_REFRESH_S, CoverageCache, CoverageCollector
from gateway.forward import Forwarder, ForwardError, Selector
from gateway.http import MetricsServer
from gateway.hub import SWEEP_INTERVAL_S, Hub
from gateway.logs import configure_logging, get_logger
from gateway.metrics import Metrics
from gateway.periodic import every
from gateway.registry import DeviceRegistry
from protocol import CrcVariant, Quirk, RejectReason, known_cns, known_sts
from storage import BatchWriter, PresenceRow, StorageError, Store, open_store
from storage.commands import command_store
from storage.outbox import outbox_store
from storage.postgres import PostgresStore
from storage.roster import ensure_snapshot
from storage.spool import Spool, SpoolError, orphaned_spool_directories, spool_directory

uvloop: ModuleType | None
try:
    import uvloop
except ImportError:  # pragma: no cover - not available on Windows
    uvloop = None

# How often the database is pinged while no batch proves it alive (readiness).
PING_INTERVAL_S = 5.0
# How often the drain of an orphaned spool (a worker of an earlier run) is looked at.
ORPHAN_POLL_S = 0.5
# A listen backlog large enough for a reconnect storm of a whole fleet: the kernel caps it
# at net.core.somaxconn anyway.
LISTEN_BACKLOG = 4_096


def utc_offset_us(zone: str) -> int:
    """The zone's current offset from UTC in microseconds (Asia/Shanghai: +8 h, no DST)."""
    offset = dt.datetime.now(ZoneInfo(zone)).utcoffset() or dt.timedelta(0)
    return int(offset.total_seconds()) * 1_000_000


class StartError(Exception):
    """The gateway could not bind one of its ports (the message says which and why)."""


class Gateway:
    """One worker: ``await start()``, then ``await stop()`` (or ``run_until_signal()``)."""

    def __init__(self, settings: Settings, *, worker: int = 0) -> None:
        self.settings = settings
        self.worker = worker
        self.log = get_logger("hj212.gateway").bind(worker=worker)
        self.registry = CollectorRegistry()
        self.metrics = Metrics(
            self.registry,
            known_cns=known_cns(),
            known_sts=known_sts(),
            reject_reasons=[r.value for r in RejectReason],
            quirks=[q.value for q in Quirk],
            crc_variants=[v.value for v in CrcVariant],
        )
        self.store: Store | None = None
        self.writer: BatchWriter | None = None
        self.hub: Hub | None = None
        self.devices: DeviceRegistry | None = None
        self.commands: CommandDispatcher | None = None
        self.forwarder: Forwarder | None = None
        self.server: asyncio.Server | None = None
        self.http: MetricsServer | None = None
        self.port = 0
        self.metrics_port = 0
        self.db_ok = False
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        s = self.settings
        self.store = open_store(s.storage)
        await self.store.open()
        applied = await self.store.migrate()
        if applied:
            self.log.info("migrations applied", migrations=applied)
        self.db_ok = True
        st = s.storage
        spool = self._spool(spool_directory(st, self.worker)) if st.spool_enabled else None
        self.writer = self._writer(
            spool,
            queue_rows=st.queue_rows,
            on_high_water=self._on_high_water,
            on_low_water=self._on_low_water,
            on_batch=self._on_batch,
        )
        await self.writer.start()
        if spool is not None and self.worker == 0:
            for orphan in orphaned_spool_directories(st, s.listen.workers):
                self._spawn(self._drain_orphan(orphan))
        self.devices = DeviceRegistry(s.auth.policy)
        self.devices.replace(await self.store.load_devices())
        self.hub = Hub(
            s,
            self.metrics,
            self.writer,
            self.log,
            worker=self.worker,
            utc_offset_us=utc_offset_us(s.protocol.timezone),
            registry=self.devices,
            store=self.store,
        )
        self.metrics.add_store_collector(self.store.stats)
        self.metrics.add_queue_collector(self._queue_gauges)
        self.metrics.add_spool_collector(self.writer.stats, self.writer.spool_stats)
        if isinstance(self.store, PostgresStore) and self.worker == 0:
            # Coverage describes the whole fleet (from the database): one process exports
            # it and keeps the daily snapshots, or the supervisor's sum would multiply it.
            self._spawn(self._coverage_loop(self.store))
        # Platform-to-device commands: NOTIFY wakes the workers on PostgreSQL; SQLite polls.
        self.commands = CommandDispatcher(
            s,
            self.hub,
            command_store(self.store),
            self.metrics,
            self.log,
            worker=self.worker,
            utc_offset_us=self.hub.utc_offset_us,
            listen_dsn=None if s.storage.dsn is None else s.storage.dsn.get_secret_value(),
        )
        self.hub.commands = self.commands
        await self.commands.start()
        if s.forward.upstreams:
            # Selected before the listener opens, so every stored frame is queued.
            self.hub.forward = Selector(s.forward.upstreams)
        loop = asyncio.get_running_loop()
        try:
            self.server = await loop.create_server(
                self.hub.make_connection,
                s.listen.host,
                s.listen.port,
                backlog=LISTEN_BACKLOG,
                reuse_port=s.listen.reuse_port or None,
            )
        except OSError as exc:  # the port is taken (another gateway?) or not ours to bind
            await self.stop()
            raise StartError(f"device listener {s.listen.host}:{s.listen.port}: {exc}") from exc
        self.port = int(self.server.sockets[0].getsockname()[1])
        for sock in self.server.sockets:
            # Half-open sockets of dead modems are also reaped by the idle timeout;
            # keepalive makes the kernel notice sooner where the peer's stack answers.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if s.forward.upstreams:
            self.forwarder = Forwarder(
                s.forward, s.listen, outbox_store(self.store), self.metrics, self.log,
                worker=self.worker,
            )  # fmt: skip
            try:
                await self.forwarder.start(self.port)  # refuses an upstream that is us
            except ForwardError:
                await self.stop()
                raise
        if s.metrics.enabled:
            self.http = MetricsServer(self.registry, self.ready)
            try:
                self.metrics_port = await self.http.start(s.metrics.host, s.metrics.port)
            except OSError as exc:
                self.http = None
                await self.stop()
                raise StartError(f"metrics {s.metrics.host}:{s.metrics.port}: {exc}") from exc
        for interval_s, job in (
            (SWEEP_INTERVAL_S, self._sweep),
            (s.storage.presence_interval_s, self._flush_presence),
            (PING_INTERVAL_S, self._ping),
            (s.auth.refresh_s, self._refresh_registry),
        ):
            self._spawn(every(interval_s, job, self.log, "periodic job failed"))
        self.log.info(
            "gateway listening",
            host=s.listen.host,
            port=self.port,
            metrics_port=self.metrics_port,
            store=self.store.kind,
            ack_policy=s.ack.policy,
            auth_policy=s.auth.policy,
        )

    # -- shutdown -----------------------------------------------------------------------

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        hub, writer, store = self.hub, self.writer, self.store
        if self.server is not None:
            self.server.close()  # stop accepting; open connections stay
        if hub is not None:
            hub.draining = True
            hub.pause_all(shutdown=True)
        if self.commands is not None:
            # Before the drain: with reading paused no answer can arrive, so no command
            # may go out now (one in flight goes back to the queue for the next holder).
            await self.commands.stop()
        left = 0
        if writer is not None:
            left = await writer.stop(self.settings.shutdown.drain_timeout_s)
            if left:
                self.metrics.unflushed_rows.inc(left)
                self.log.warning("shutdown deadline passed with rows unwritten", rows=left)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.forwarder is not None:
            await self.forwarder.stop()
        if hub is not None:
            await self._flush_presence()
            for conn in list(hub.connections):
                conn.close("shutdown")
        if self.server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await self.server.wait_closed()
        if self.http is not None:
            await self.http.close()
        if store is not None:
            await store.close()
        self.log.info("gateway stopped", rows_unwritten=left)

    async def run_until_signal(self, on_started: Callable[[], None] | None = None) -> None:
        await self.start()
        if on_started is not None:
            on_started()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        self.log.info("signal received; draining")
        await self.stop()

    # -- callbacks and periodic jobs ------------------------------------------------------

    def _on_high_water(self) -> None:
        if self.hub is not None:
            self.hub.pause_all()

    def _on_low_water(self) -> None:
        if self.hub is not None and not self.hub.draining:
            self.hub.resume_all()

    def _on_batch(self, rows: int, seconds: float, ok: bool, kind: str) -> None:
        m = self.metrics
        m.batch_seconds.labels("ok" if ok else "error").observe(seconds)
        if ok:
            m.batch_rows.observe(rows)
            self.db_ok = True
            if self.forwarder is not None:  # the batch's outbox rows are readable now
                self.forwarder.wake()
            self.log.debug("batch written", rows=rows, seconds=round(seconds, 4))
        else:
            m.writer_retries.inc()
            m.writer_errors.labels(kind).inc()
            self.db_ok = False

    def _queue_gauges(self) -> tuple[int, int, int, int]:
        writer, hub = self.writer, self.hub
        if writer is None or hub is None:
            return (0, 0, 0, 0)
        return (writer.depth_rows, writer.capacity_rows, hub.paused_count(), len(hub.sessions))

    def ready(self) -> tuple[bool, str]:
        """Readiness: can make data durable now and is not draining."""
        if self._stopping or self.hub is None or self.writer is None:
            return False, "draining"
        if not self.db_ok and not self.writer.spool_has_room():
            return False, "database unreachable (and no spool room)"
        if self.hub.paused:
            return False, "write queue above high water"
        return True, "ready"

    async def _sweep(self) -> None:
        if self.hub is not None:
            self.hub.sweep()

    def _spool(self, directory: Path) -> Spool:
        st = self.settings.storage
        return Spool(directory, max_bytes=st.spool_max_bytes, segment_bytes=st.spool_segment_bytes)

    def _writer(
        self,
        spool: Spool | None,
        *,
        queue_rows: int,
        on_high_water: Callable[[], None],
        on_low_water: Callable[[], None],
        on_batch: Callable[[int, float, bool, str], None] | None = None,
    ) -> BatchWriter:
        st = self.settings.storage
        assert self.store is not None
        return BatchWriter(
            self.store,
            queue_rows=queue_rows,
            high_water_rows=int(queue_rows * st.high_water),
            low_water_rows=int(queue_rows * st.low_water),
            batch_rows=st.batch_rows,
            linger_s=st.linger_ms / 1000.0,
            retry_initial_s=st.retry_initial_ms / 1000.0,
            retry_max_s=st.retry_max_ms / 1000.0,
            on_high_water=on_high_water,
            on_low_water=on_low_water,
            on_batch=on_batch,
            spool=spool,
            spool_after_s=st.spool_after_s,
        )

    async def _drain_orphan(self, directory: Path) -> None:
        """Drain the spool a worker of an earlier run left (that run had more workers):
        a writer of its own on it, stopped once it is empty. Its rows are older than what
        arrives now; the stores keep the values with the latest ``received_at``."""
        spool = self._spool(directory)
        # Offered nothing: it only drains (its queue and water marks never come into play).
        writer = self._writer(
            spool, queue_rows=1_000, on_high_water=lambda: None, on_low_water=lambda: None
        )
        try:
            await writer.start()
        except SpoolError as exc:  # locked: a process of the earlier run still uses it
            self.log.warning("orphaned spool not drained", directory=str(directory), error=str(exc))
            return
        found = spool.stats()
        self.log.warning(
            "draining the spool of a worker no longer run",
            directory=str(directory),
            rows=found.rows,
        )
        try:
            while spool.batches:  # noqa: ASYNC110 (the spool has no event to wait on)
                await asyncio.sleep(ORPHAN_POLL_S)
        finally:
            await writer.stop(self.settings.shutdown.drain_timeout_s)
        self.log.info("orphaned spool drained", directory=str(directory), rows=found.rows)

    async def _flush_presence(self) -> None:
        if self.hub is None or self.store is None:
            return
        rows = self.hub.take_presence()
        if not rows:
            return
        await self._write_presence(rows)

    async def _write_presence(self, rows: list[PresenceRow]) -> None:
        """Write presence rows; when the batch fails, halves are tried, so one row the
        database refuses costs only itself (not every device's counters), and a database
        that is down costs one attempt per half that fails."""
        assert self.store is not None
        try:
            await self.store.write_presence(rows)
        except Exception as exc:  # presence is advisory; never stop the gateway for it
            retriable = getattr(exc, "retriable", False)
            if len(rows) == 1 or retriable:
                self.log.warning(
                    "presence write failed",
                    error=str(exc),
                    devices=len(rows),
                    mn=rows[0].mn if len(rows) == 1 else None,
                )
                return
            half = len(rows) // 2
            await self._write_presence(rows[:half])
            await self._write_presence(rows[half:])

    async def _refresh_registry(self) -> None:
        if self.store is not None and self.devices is not None:
            self.devices.replace(await self.store.load_devices())

    async def _ping(self) -> None:
        writer, store = self.writer, self.store
        if writer is None or store is None:
            return
        if writer.depth_rows and writer.healthy:
            return  # batches are flowing: they prove the database alive
        try:
            async with asyncio.timeout(PING_INTERVAL_S):
                self.db_ok = await store.ping()
        except Exception:
            self.db_ok = False

    async def _coverage_loop(self, store: PostgresStore) -> None:
        """Refresh the per-city gauges every COVERAGE_REFRESH_S; snapshot each finished day."""
        cache = CoverageCache()
        self.registry.register(CoverageCollector(cache.get))
        tz = ZoneInfo(self.settings.protocol.timezone)
        snapshot_for: dt.date | None = None
        while True:
            try:
                await cache.refresh(store.pool)
                yesterday = dt.datetime.now(tz).date() - dt.timedelta(days=1)
                if snapshot_for != yesterday:
                    await ensure_snapshot(store.pool, yesterday, tz=self.settings.protocol.timezone)
                    snapshot_for = yesterday
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.warning("coverage refresh failed", error=repr(exc))
            await asyncio.sleep(COVERAGE_REFRESH_S)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coro))


def run(settings: Settings) -> int:
    """Run the gateway until SIGTERM/SIGINT: in this process, or as ``listen.workers``
    processes under a supervisor."""
    if settings.listen.workers > 1:
        from gateway.supervisor import run_supervisor  # noqa: PLC0415 - avoids a cycle

        return run_supervisor(settings, settings.listen.workers)
    configure_logging(settings.log.level, settings.log.format)
    return run_gateway(Gateway(settings))


def run_gateway(gateway: Gateway, on_started: Callable[[], None] | None = None) -> int:
    """Run one gateway until SIGTERM/SIGINT, on uvloop when it is installed."""
    try:
        if uvloop is None:  # pragma: no cover - uvloop is a dependency on Linux
            asyncio.run(gateway.run_until_signal(on_started))
        else:
            uvloop.run(gateway.run_until_signal(on_started))
    except StorageError as exc:
        gateway.log.error("cannot start: storage unavailable", error=str(exc))
        return 1
    except ForwardError as exc:
        gateway.log.error("cannot start: forward configuration", error=str(exc))
        return 2
    except StartError as exc:
        gateway.log.error("cannot start: address in use or not allowed", error=str(exc))
        return 2
    return 0
