"""The forwarder of one worker: every configured upstream, the connection budget, the
loop check at start, the periodic sweep and the pruning of old outbox rows."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import time
from collections.abc import Coroutine
from typing import Any, Final

from config.settings import ForwardConfig, ListenConfig
from gateway.forward.upstream import Budget, SelfCheck, Upstream, UpstreamCounters
from gateway.metrics import ForwardGauge, Metrics
from storage import StorageError
from storage.outbox import Outbox

__all__ = ["ForwardError", "Forwarder"]

SWEEP_S: Final = 1.0
"""Confirmation timeouts, idle connections and queued connection attempts are checked
this often: timeouts are tens of seconds, so a second of resolution is plenty."""
FD_RESERVE: Final = 256
"""Files a worker needs besides device and upstream sockets: the database pool, the
metrics listener and its scrapes, the spool and log files, the listening sockets."""
MIN_CONNECTIONS: Final = 16
"""Floor of the ``per_device`` connection budget when the file limit leaves less: frames
still flow (connections are recycled), only slower."""
PRUNE_CHUNK: Final = 10_000
"""Outbox rows deleted per statement, so pruning never holds locks for long."""
PRUNE_MAX_CHUNKS: Final = 1_000
"""Chunks per pruning round (ten million rows); the rest waits for the next round."""
STOP_FLUSH_S: Final = 5.0
"""At shutdown, how long recording the last confirmations may take."""


class ForwardError(Exception):
    """The forward configuration cannot work (an upstream is this gateway itself)."""


def file_limit() -> int:
    """The soft limit on open files of this process."""
    return int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


class Forwarder:
    """Forwards this worker's outbox rows to every configured upstream."""

    def __init__(
        self,
        cfg: ForwardConfig,
        listen: ListenConfig,
        outbox: Outbox,
        metrics: Metrics,
        log: Any,
        *,
        worker: int = 0,
    ) -> None:
        self.cfg = cfg
        self.listen = listen
        self.outbox = outbox
        self.metrics = metrics
        self.log = log
        self.worker = worker
        self.upstreams: list[Upstream] = []
        self.budget = Budget(cfg.max_connections)
        self._tasks: list[asyncio.Task[None]] = []

    # -- start and stop -------------------------------------------------------------------

    async def check(self, port: int) -> SelfCheck:
        """Refuse an upstream that resolves to this gateway's own listener (``port`` is the
        port actually bound). A name that does not resolve now is checked at connect."""
        check = SelfCheck(self.listen.host, port)
        loop = asyncio.get_running_loop()
        for up in self.cfg.upstreams:
            if up.port != port:
                continue
            try:
                infos = await loop.getaddrinfo(up.host, up.port, type=socket.SOCK_STREAM)
            except OSError as exc:
                self.log.warning(
                    "forward: upstream does not resolve now (checked again at connect)",
                    upstream=up.name,
                    host=up.host,
                    error=str(exc),
                )
                continue
            for info in infos:
                ip = str(info[4][0])
                if check.is_self(ip, port):
                    raise ForwardError(
                        f"forward.upstreams: {up.name} ({up.host}:{up.port} -> {ip}) is this "
                        "gateway's own listener"
                    )
        return check

    def _budget_limit(self) -> int:
        wanted = self.cfg.max_connections
        room = file_limit() - self.listen.max_connections - FD_RESERVE
        if room >= wanted:
            return wanted
        limit = max(room, MIN_CONNECTIONS)
        self.log.warning(
            "forward: per-device upstream connections capped by the file limit "
            "(lower listen.max_connections or run more workers)",
            wanted=wanted,
            cap=limit,
            file_limit=file_limit(),
            listen_max_connections=self.listen.max_connections,
        )
        return limit

    async def start(self, port: int) -> None:
        """Check for loops, then start sending. Raises ``ForwardError``."""
        self_check = await self.check(port)
        if any(up.mode == "per_device" for up in self.cfg.upstreams):
            self.budget.limit = self._budget_limit()
        m = self.metrics
        for up in self.cfg.upstreams:
            name = up.name
            counters = UpstreamCounters(
                queued=m.forward_queued.labels(name),
                sent=m.forward_sent.labels(name),
                retries=m.forward_retries.labels(name),
                confirmed_9014=m.forward_confirmed.labels(name, "9014"),
                confirmed_write=m.forward_confirmed.labels(name, "write"),
                unanswered=m.forward_given_up.labels(name, "unanswered"),
                refused=m.forward_given_up.labels(name, "refused"),
                connect_failures=m.forward_connect_failures.labels(name),
            )
            upstream = Upstream(
                up,
                self.cfg,
                self.outbox,
                counters,
                self.log,
                worker=self.worker,
                budget=self.budget,
                self_check=self_check,
            )
            self.upstreams.append(upstream)
            upstream.start()
        m.add_forward_collector(self.gauges)
        self._spawn(self._sweep())
        if self.worker == 0:
            # Rows of every worker: one process prunes, the others would only contend.
            self._spawn(self._prune())
        self.log.info(
            "forwarding",
            upstreams=[f"{u.name}={u.host}:{u.port}/{u.mode}" for u in self.cfg.upstreams],
            connection_budget=self.budget.limit,
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for upstream in self.upstreams:
            await upstream.stop(STOP_FLUSH_S)

    def wake(self) -> None:
        """A batch was committed: its outbox rows can be read now."""
        for upstream in self.upstreams:
            upstream.wake_loader()

    def gauges(self) -> list[ForwardGauge]:
        now_us = time.time_ns() // 1000
        return [
            ForwardGauge(u.name, u.backlog, u.lag_s(now_us), u.connections())
            for u in self.upstreams
        ]

    # -- periodic jobs --------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coro))

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            for upstream in self.upstreams:
                try:
                    upstream.sweep()
                except Exception as exc:  # a bug must not stop forwarding for good
                    self.log.error("forward: sweep failed", upstream=upstream.name, error=repr(exc))

    async def _prune(self) -> None:
        keep_us = int(self.cfg.keep_confirmed_hours * 3_600_000_000)
        while True:
            await asyncio.sleep(self.cfg.prune_interval_s)
            before_us = time.time_ns() // 1000 - keep_us
            deleted = 0
            try:
                for _ in range(PRUNE_MAX_CHUNKS):
                    n = await self.outbox.prune(before_us, PRUNE_CHUNK)
                    deleted += n
                    if n < PRUNE_CHUNK:
                        break
            except StorageError as exc:
                self.log.warning("forward: pruning the outbox failed", error=str(exc))
            if deleted:
                self.log.info("forward: outbox pruned", rows=deleted)
