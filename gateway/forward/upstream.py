"""Sending one upstream platform's outbox: order per device, connections, confirmations.

Theory of operation
-------------------
The outbox (``storage.outbox``) is the queue; memory only holds a window of it. A loader
reads this worker's pending rows of the upstream in id order (the order frames were
stored) after a cursor, at most ``forward.memory_frames`` at a time, and appends each to
its device's queue. Each device sends the head of its queue and waits for it to be
settled before the next, as a DAU waits for the 9014 of one upload before the next
(protocol.md 6.3): the upstream's 9014 when the frame asked for one, else the kernel taking
the bytes. So a device's frames reach the upstream in order, and after a lost connection
only the frame in flight is sent again. Settled rows are recorded in the outbox in one
statement every ``forward.confirm_flush_s``.

A device whose older frames are still pending at another worker (it reconnected to this
one) is held until they are settled, so its frames never overtake each other there.

Connections: ``per_device`` opens one connection per device with frames to send (the
upstream binds identity to the connection), closes it after ``forward.idle_close_s``
without work, and shares ``forward.max_connections`` with the other upstreams of the
worker (``Budget``: the idlest connection is closed for a new one, or the device waits);
``shared`` keeps one connection with up to ``forward.shared_window`` frames in flight.
Connection attempts in flight are limited to ``forward.connect_concurrency``. When an
attempt fails the upstream counts as down: one probe is made after a capped exponential
backoff with jitter, and when it connects every waiting device follows.

Nothing here raises into the event loop: database errors are logged (rate-limited) and
retried; the outbox keeps every frame until it is settled.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Final

from config.settings import ForwardConfig, UpstreamConfig
from gateway.forward.link import Link
from gateway.forward.rewrite import RewriteError, Rewriter
from protocol import Packet
from storage import StorageError
from storage.outbox import Outbox, OutboxItem, Settled

__all__ = ["Budget", "Device", "Item", "SelfCheck", "Upstream", "UpstreamCounters"]

DNS_TTL_S: Final = 300.0
"""An upstream host name is resolved again after this long (or after a failed attempt):
platforms move rarely, and 12,000 connections must not mean 12,000 lookups."""
LOG_EVERY_S: Final = 10.0
"""Repeated warnings of one kind (database errors, refused rewrites) are logged at most
this often per upstream, with the count since the last line."""
JITTER: Final = 0.25
"""Backoff delays are spread by up to this fraction, so workers and devices do not retry
in lockstep."""


@dataclass(slots=True, eq=False)
class Item:
    """One outbox row in memory."""

    id: int
    mn: str
    raw: bytes
    confirm: bool
    qn: str | None
    received_at_us: int
    attempts: int = 0
    sent_at_us: int | None = None
    unanswered: int = 0
    """Sends on live connections that got no 9014 within ``confirm_timeout_s``."""
    wire: bytes | None = None
    """The bytes sent (``raw``, or its rewrite), computed once."""


class Device:
    """One device's queue for one upstream."""

    __slots__ = (
        "backoff",
        "connecting",
        "deadline",
        "held",
        "inflight",
        "link",
        "mn",
        "next_connect",
        "queue",
        "queued_for_connect",
        "queued_for_window",
        "waiting_budget",
    )

    def __init__(self, mn: str, backoff: float) -> None:
        self.mn = mn
        self.queue: deque[Item] = deque()
        self.inflight: Item | None = None
        self.deadline = 0.0
        self.link: Link | None = None
        self.connecting = False
        self.held = False
        self.backoff = backoff
        self.next_connect = 0.0
        self.queued_for_connect = False
        self.queued_for_window = False
        self.waiting_budget = False

    @property
    def busy(self) -> bool:
        return bool(self.queue) or self.inflight is not None


class UpstreamCounters:
    """Metric children of one upstream (gateway.metrics creates them)."""

    def __init__(
        self,
        *,
        queued: Any,
        sent: Any,
        retries: Any,
        confirmed_9014: Any,
        confirmed_write: Any,
        unanswered: Any,
        refused: Any,
        connect_failures: Any,
    ) -> None:
        self.queued = queued
        self.sent = sent
        self.retries = retries
        self.confirmed_9014 = confirmed_9014
        self.confirmed_write = confirmed_write
        self.unanswered = unanswered
        self.refused = refused
        self.connect_failures = connect_failures


class SelfCheck:
    """Whether an address is this gateway's own listener (field-quirks Q23: a relay that
    feeds itself). Addresses are ours when they can be bound here."""

    def __init__(self, listen_host: str, listen_port: int) -> None:
        self.host = listen_host
        self.port = listen_port
        self._local: dict[str, bool] = {}

    def is_local(self, ip: str) -> bool:
        known = self._local.get(ip)
        if known is None:
            known = self._local[ip] = _bindable(ip)
        return known

    def is_self(self, ip: str, port: int) -> bool:
        if port != self.port:
            return False
        wildcard = self.host in ("", "0.0.0.0", "::")
        if wildcard:
            return self.is_local(ip)
        return ip == self.host or (_is_loopback(ip) and _is_loopback(self.host) and ip == self.host)


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def _bindable(ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if addr.is_loopback or addr.is_unspecified:
        return True
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((ip, 0))
        except OSError:
            return False
    return True


class Budget:
    """The ``per_device`` connections one worker may hold (all upstreams together)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.idle: OrderedDict[Link, None] = OrderedDict()
        """Connections without work, oldest idle first: closed to make room."""
        self.waiters: deque[tuple[Upstream, Device]] = deque()

    def acquire(self) -> bool:
        if self.used < self.limit:
            self.used += 1
            return True
        if self.idle:
            link, _ = self.idle.popitem(last=False)
            link.close()  # its slot comes back with connection_lost
        return False

    def release(self) -> None:
        self.used -= 1
        while self.waiters and self.used < self.limit:
            upstream, device = self.waiters.popleft()
            device.waiting_budget = False
            upstream.request_connect(device)


class Upstream:
    """Forwards one upstream's outbox rows received by this worker."""

    def __init__(
        self,
        cfg: UpstreamConfig,
        fwd: ForwardConfig,
        outbox: Outbox,
        counters: UpstreamCounters,
        log: Any,
        *,
        worker: int,
        budget: Budget,
        self_check: SelfCheck,
    ) -> None:
        self.cfg = cfg
        self.fwd = fwd
        self.name = cfg.name
        self.shared = cfg.mode == "shared"
        self.outbox = outbox
        self.counters = counters
        self.log = log.bind(upstream=cfg.name)
        self.worker = worker
        self.budget = budget
        self.self_check = self_check
        self.rewriter = Rewriter(cfg.rewrite) if cfg.rewrite.active else None
        self.loop = asyncio.get_running_loop()

        self.devices: dict[str, Device] = {}
        self.pending: dict[int, Item] = {}
        """Loaded and not settled, in id order: the first is the oldest (the lag)."""
        self.cursor = 0
        self.settled: list[Settled] = []
        self.wake = asyncio.Event()
        self.awaiting_9014: set[Device] = set()

        self.links: set[Link] = set()
        self.shared_link: Link | None = None
        self.shared_connecting = False
        self.window_used = 0
        self.window_queue: deque[Device] = deque()
        self.connect_queue: deque[Device] = deque()
        self.connecting = 0
        self.reachable: bool | None = None
        self.retry_at = 0.0
        self.backoff = fwd.retry_initial_s
        self._addr: tuple[str, float] | None = None

        self.backlog = 0
        self.backlog_oldest_us: int | None = None
        self.loaded = False
        """The outbox was read at least once (before that, the lag comes from ``backlog``)."""
        self._tasks: list[asyncio.Task[None]] = []
        self._connects: set[asyncio.Task[None]] = set()
        self.stopping = False
        self._warned: dict[str, tuple[float, int]] = {}

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._spawn(self._loader(), "loader")
        self._spawn(self._flusher(), "flusher")
        self._spawn(self._stats(), "stats")

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        self._tasks.append(self.loop.create_task(coro, name=f"hj212-forward-{self.name}-{what}"))

    async def stop(self, deadline_s: float) -> None:
        """Stop sending, close the connections and record what was settled. Frames in
        flight stay pending: they are sent again after the next start."""
        self.stopping = True
        tasks = [*self._tasks, *self._connects]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for link in list(self.links):
            link.close()
        if self.settled:
            with contextlib.suppress(StorageError, TimeoutError):
                async with asyncio.timeout(deadline_s):
                    await self._flush()
        if self.settled:
            self.log.warning(
                "forward: confirmations not recorded at shutdown (sent again next start)",
                frames=len(self.settled),
            )

    def wake_loader(self) -> None:
        self.wake.set()

    # -- the outbox -----------------------------------------------------------------------

    async def _loader(self) -> None:
        fwd = self.fwd
        while True:
            try:
                await self._load()
                await self._recheck_held()
            except StorageError as exc:
                self._warn("load", "forward: reading the outbox failed", error=str(exc))
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(fwd.poll_interval_s):
                    await self.wake.wait()

    async def _load(self) -> None:
        memory = self.fwd.memory_frames
        while len(self.pending) < memory:
            limit = min(self.fwd.load_frames, memory - len(self.pending))
            rows = await self.outbox.load(self.name, self.worker, self.cursor, limit)
            self.loaded = True
            if not rows:
                return
            self.cursor = rows[-1].id
            await self._add(rows)
            if len(rows) < limit:
                return

    async def _add(self, rows: Sequence[OutboxItem]) -> None:
        started: dict[str, int] = {}
        touched: list[Device] = []
        fresh = 0
        for row in rows:
            if row.id in self.pending:
                continue
            fresh += 1
            item = Item(row.id, row.mn, row.raw, row.confirm, row.qn, row.received_at_us)
            self.pending[row.id] = item
            device = self.devices.get(row.mn)
            if device is None:
                device = self.devices[row.mn] = Device(row.mn, self.fwd.retry_initial_s)
            if not device.busy and not device.held:
                started[row.mn] = row.id
                device.held = True  # until the check below says no other worker is ahead
            device.queue.append(item)
            touched.append(device)
        self.counters.queued.inc(fresh)
        ahead: set[str] = set()
        if started:
            try:
                ahead = await self.outbox.older_elsewhere(self.name, self.worker, started)
            except StorageError:
                ahead = set(started)  # checked again with the held ones
                raise
            finally:
                for mn in started:
                    self.devices[mn].held = mn in ahead
        for device in touched:
            self._work_arrived(device)
            self.pump(device)

    async def _recheck_held(self) -> None:
        held = {d.mn: d.queue[0].id for d in self.devices.values() if d.held and d.queue}
        if not held:
            return
        ahead = await self.outbox.older_elsewhere(self.name, self.worker, held)
        for mn in held:
            device = self.devices[mn]
            if mn not in ahead:
                device.held = False
                self.pump(device)

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(self.fwd.confirm_flush_s)
            try:
                await self._flush()
            except StorageError as exc:
                self._warn("settle", "forward: recording confirmations failed", error=str(exc))

    async def _flush(self) -> None:
        batch, self.settled = self.settled, []
        if not batch:
            return
        try:
            await self.outbox.settle(batch)
        except BaseException:
            self.settled = batch + self.settled
            raise

    async def _stats(self) -> None:
        while True:
            try:
                self.backlog, self.backlog_oldest_us = await self.outbox.backlog(
                    self.name, self.worker
                )
            except StorageError as exc:
                self._warn("stats", "forward: counting the outbox failed", error=str(exc))
            await asyncio.sleep(self.fwd.stats_interval_s)

    def lag_s(self, now_us: int) -> float:
        """Age of the oldest frame this worker has not yet had confirmed."""
        oldest: int | None = None
        if self.pending:
            oldest = next(iter(self.pending.values())).received_at_us
        elif not self.loaded and self.backlog:
            oldest = self.backlog_oldest_us
        return 0.0 if oldest is None else max(0.0, (now_us - oldest) / 1e6)

    # -- sending --------------------------------------------------------------------------

    def pump(self, device: Device) -> None:
        """Send the device's next frame if nothing of it is in flight and a connection is
        ready; frames that need no reply follow each other until one waits."""
        while device.inflight is None and device.queue and not device.held:
            link = self._link_for(device)
            if link is None:
                return
            item = device.queue[0]
            wire = self._wire(item)
            if wire is None:
                device.queue.popleft()
                self._settle(device, item, "refused")
                continue
            self._send(device, item, wire, link)

    def _link_for(self, device: Device) -> Link | None:
        if self.shared:
            link = self.shared_link
            if link is None or not link.ready:
                self.ensure_shared()
                return None
            if self.window_used >= self.fwd.shared_window:
                if not device.queued_for_window:
                    device.queued_for_window = True
                    self.window_queue.append(device)
                return None
            return link
        link = device.link
        if link is None:
            self.request_connect(device)
            return None
        return link if link.ready else None

    def _wire(self, item: Item) -> bytes | None:
        if item.wire is None:
            if self.rewriter is None:
                item.wire = item.raw
            else:
                try:
                    item.wire = self.rewriter(item.raw)
                except RewriteError as exc:
                    self._warn("rewrite", "forward: frame not sent (rewrite failed)", mn=item.mn,
                               error=str(exc))  # fmt: skip
                    return None
        return item.wire

    def _send(self, device: Device, item: Item, wire: bytes, link: Link) -> None:
        device.inflight = item
        item.attempts += 1
        if item.sent_at_us is None:
            item.sent_at_us = time.time_ns() // 1000
        else:
            self.counters.retries.inc()
        self.counters.sent.inc()
        if self.shared:
            self.window_used += 1
        if link.idle_since is not None:
            link.idle_since = None
            self.budget.idle.pop(link, None)
        in_kernel = link.write(wire)
        if item.confirm:
            device.deadline = self.loop.time() + self.fwd.confirm_timeout_s
            self.awaiting_9014.add(device)
        elif in_kernel:
            self._done(device, item, "written", link)
        else:
            link.unflushed.append((device, item))

    def _done(self, device: Device, item: Item, outcome: str, link: Link | None) -> None:
        """``item`` (the device's frame in flight) is settled."""
        device.inflight = None
        self.awaiting_9014.discard(device)
        if device.queue and device.queue[0] is item:
            device.queue.popleft()
        if self.shared:
            self.window_used -= 1
        device.backoff = self.fwd.retry_initial_s
        if link is not None:
            link.progress = True
        self._settle(device, item, outcome)
        if self.shared:
            self._open_window()

    def _settle(self, device: Device, item: Item, outcome: str) -> None:
        self.pending.pop(item.id, None)
        self.settled.append(
            Settled(item.id, outcome, item.attempts, item.sent_at_us, time.time_ns() // 1000)
        )
        counters = self.counters
        if outcome == "9014":
            counters.confirmed_9014.inc()
        elif outcome == "written":
            counters.confirmed_write.inc()
        elif outcome == "unanswered":
            counters.unanswered.inc()
        else:
            counters.refused.inc()
        if not device.busy:
            self._went_idle(device)

    def _open_window(self) -> None:
        queue = self.window_queue
        while queue and self.window_used < self.fwd.shared_window:
            device = queue.popleft()
            device.queued_for_window = False
            self.pump(device)

    def _work_arrived(self, device: Device) -> None:
        link = device.link
        if link is not None and link.idle_since is not None:
            link.idle_since = None
            self.budget.idle.pop(link, None)

    def _went_idle(self, device: Device) -> None:
        link = device.link
        if link is not None and not self.shared and link.idle_since is None:
            link.idle_since = self.loop.time()
            self.budget.idle[link] = None

    # -- events from connections ----------------------------------------------------------

    def on_packet(self, link: Link, packet: Packet) -> None:
        if packet.cn != "9014":
            return  # requests from the upstream are not relayed (yet): no reply pending
        device = link.device if link.device is not None else self.devices.get(packet.mn)
        if device is None:
            return
        item = device.inflight
        if item is None or not item.confirm or item.qn != packet.qn:
            return  # a late or stray 9014 (the frame was settled or resent already)
        self._done(device, item, "9014", link)
        self.pump(device)

    def on_drained(self, link: Link) -> None:
        flushed, link.unflushed = link.unflushed, []
        for device, item in flushed:
            if device.inflight is item:
                self._done(device, item, "written", link)
                self.pump(device)
        if self.shared:
            self._open_window()
        elif link.device is not None:
            self.pump(link.device)

    def on_lost(self, link: Link, exc: Exception | None) -> None:
        registered = link in self.links
        self.links.discard(link)
        self.budget.idle.pop(link, None)
        now = self.loop.time()
        if self.shared:
            if link is self.shared_link:
                self.shared_link = None
                self.window_used = 0
                self.window_queue.clear()
                for device in self.devices.values():
                    device.queued_for_window = False
                    if device.inflight is not None:
                        self._unsend(device)
                if not link.progress:
                    self._failed(exc or ConnectionError("closed before any confirmation"))
                self.ensure_shared()
            return
        if not registered:
            return  # still in _connect, which settles its slot
        self.budget.release()
        owner = link.device
        if owner is None or owner.link is not link:
            return
        device = owner
        device.link = None
        if device.inflight is not None:
            self._unsend(device)
        if link.progress:
            device.backoff = self.fwd.retry_initial_s
            device.next_connect = now
        else:  # accepted, then dropped without settling anything: do not hammer it
            device.next_connect = now + _jitter(device.backoff)
            device.backoff = min(device.backoff * 2, self.fwd.retry_max_s)
        if device.busy:
            self.request_connect(device)

    def _unsend(self, device: Device) -> None:
        """The connection carrying the device's frame in flight is gone: the frame stays at
        the head of the queue and goes again on the next connection."""
        device.inflight = None
        self.awaiting_9014.discard(device)

    # -- connections ----------------------------------------------------------------------

    def ensure_shared(self) -> None:
        if self.stopping or self.shared_link is not None or self.shared_connecting:
            return
        if self.loop.time() < self.retry_at:
            return  # the sweep tries again
        self.shared_connecting = True
        self._connect_task(None)

    def _connect_task(self, device: Device | None) -> None:
        task = self.loop.create_task(self._connect(device))
        self._connects.add(task)
        task.add_done_callback(self._connects.discard)

    def request_connect(self, device: Device) -> None:
        """Open the device's connection now, or queue it until it may be opened."""
        if self.stopping or device.link is not None or device.connecting or not device.busy:
            return
        now = self.loop.time()
        may = (
            now >= device.next_connect
            and self.connecting < self.fwd.connect_concurrency
            and (self.reachable is not False or (now >= self.retry_at and self.connecting == 0))
        )
        if not may:
            if not device.queued_for_connect:
                device.queued_for_connect = True
                self.connect_queue.append(device)
            return
        if device.waiting_budget:
            return
        if not self.budget.acquire():
            device.waiting_budget = True
            self.budget.waiters.append((self, device))
            return
        device.connecting = True
        self.connecting += 1
        self._connect_task(device)

    def drain_connect_queue(self) -> None:
        """Start the queued connections that may start now (after a connection attempt
        ends, and every sweep)."""
        queue = self.connect_queue
        for _ in range(len(queue)):
            if self.connecting >= self.fwd.connect_concurrency:
                return
            if self.reachable is False and self.connecting:
                return  # one probe at a time while the upstream is down
            device = queue.popleft()
            device.queued_for_connect = False
            self.request_connect(device)

    async def _connect(self, device: Device | None) -> None:
        link = Link(self, device)
        try:
            host = await self._address()
            async with asyncio.timeout(self.fwd.connect_timeout_s):
                await self.loop.create_connection(lambda: link, host, self.cfg.port)
            transport = link.transport
            assert transport is not None
            peer = transport.get_extra_info("peername")
            if isinstance(peer, tuple) and self.self_check.is_self(str(peer[0]), int(peer[1])):
                transport.abort()
                link.closed = True
                raise ConnectionRefusedError(
                    f"{self.cfg.host}:{self.cfg.port} is this gateway's own listener"
                )
        except (OSError, TimeoutError) as exc:
            self._addr = None
            self._failed(exc)
            if device is None:
                self.shared_connecting = False
            else:
                device.connecting = False
                self.connecting -= 1
                device.next_connect = self.retry_at
                self.budget.release()
                self.request_connect(device)
            self.drain_connect_queue()
            return
        except BaseException:
            if device is not None:
                device.connecting = False
                self.connecting -= 1
                self.budget.release()
            else:
                self.shared_connecting = False
            link.close()
            raise
        self._reached()
        self.links.add(link)
        if device is None:
            self.shared_connecting = False
            self.shared_link = link
            for waiting in list(self.devices.values()):
                self.pump(waiting)
        else:
            device.connecting = False
            self.connecting -= 1
            if link.closed:  # lost already (on_lost ignored it: not yet the device's link)
                self.budget.release()
                self.request_connect(device)
            else:
                device.link = link
                self.pump(device)
                if not device.busy:
                    self._went_idle(device)
        self.drain_connect_queue()

    async def _address(self) -> str:
        host = self.cfg.host
        try:
            ipaddress.ip_address(host.strip("[]"))
            return host.strip("[]")
        except ValueError:
            pass
        now = self.loop.time()
        if self._addr is not None and self._addr[1] > now:
            return self._addr[0]
        infos = await self.loop.getaddrinfo(host, self.cfg.port, type=socket.SOCK_STREAM)
        if not infos:
            raise OSError(f"{host}: no address")
        ip = str(infos[0][4][0])
        self._addr = (ip, now + DNS_TTL_S)
        return ip

    def _failed(self, exc: BaseException) -> None:
        self.counters.connect_failures.inc()
        now = self.loop.time()
        if self.reachable is not False:
            self.log.warning(
                "forward: upstream unreachable; frames wait in the outbox",
                host=self.cfg.host,
                port=self.cfg.port,
                error=repr(exc),
            )
        if self.reachable is not False or now >= self.retry_at:
            # Only the first failure of a wave (attempts in flight fail together) or a
            # probe moves the backoff on.
            self.retry_at = now + _jitter(self.backoff)
            self.backoff = min(self.backoff * 2, self.fwd.retry_max_s)
        self.reachable = False

    def _reached(self) -> None:
        if self.reachable is False:
            self.log.info("forward: upstream reachable again", host=self.cfg.host)
        self.reachable = True
        self.backoff = self.fwd.retry_initial_s
        self.retry_at = 0.0

    # -- the sweep (every second) ---------------------------------------------------------

    def sweep(self) -> None:
        """Confirmation timeouts, idle connections, retries of queued connections."""
        now = self.loop.time()
        for device in [d for d in self.awaiting_9014 if d.deadline <= now]:
            item = device.inflight
            if item is None:
                self.awaiting_9014.discard(device)
                continue
            item.unanswered += 1
            if item.unanswered > self.fwd.confirm_resends:
                self._done(device, item, "unanswered", device.link or self.shared_link)
            else:
                self._unsend(device)
                if self.shared:
                    self.window_used -= 1
            self.pump(device)
        if self.shared:
            self.ensure_shared()
            self._open_window()
        else:
            idle_before = now - self.fwd.idle_close_s
            for link in list(self.links):
                if link.idle_since is not None and link.idle_since < idle_before:
                    link.close()
            self.drain_connect_queue()
        if len(self.devices) > 2 * len(self.pending) + 1_000:
            self._forget_idle_devices()

    def _forget_idle_devices(self) -> None:
        for mn in [
            mn
            for mn, d in self.devices.items()
            if not d.busy and d.link is None and not d.connecting and not d.held
            and not d.queued_for_connect and not d.queued_for_window
        ]:  # fmt: skip
            del self.devices[mn]

    # -- helpers --------------------------------------------------------------------------

    def _warn(self, kind: str, message: str, **fields: Any) -> None:
        now = self.loop.time()
        last, count = self._warned.get(kind, (-LOG_EVERY_S, 0))
        if now - last < LOG_EVERY_S:
            self._warned[kind] = (last, count + 1)
            return
        self._warned[kind] = (now, 0)
        self.log.warning(message, repeated=count, **fields)

    def connections(self) -> int:
        return len(self.links)


def _jitter(delay: float) -> float:
    return delay * (1.0 + random.uniform(-JITTER, JITTER))
