"""The batch writer: a bounded, row-counted queue in front of a ``Store``, with group commit.

``offer`` is synchronous and never awaits (it is called from ``data_received``). It refuses
an entry when the queue holds ``queue_rows`` rows; the caller then sends no reply and the
device resends later (design.md section 2). One background task takes up to ``batch_rows``
rows, when that many are queued or the oldest entry has waited ``linger_s``, and writes
them with ``store.write``; once that returns the rows are durable and the entries'
``on_durable`` callbacks run, in offer order.

Failures: a retriable ``StorageError`` (database down, timeout) retries the same batch
with capped exponential backoff, forever, firing no callback until it succeeds; the queue
then fills, high water pauses every connection, and devices keep their data. A
non-retriable error (a value the database refuses) bisects the batch until the entry
that causes it is alone, counts and drops it (its callback never fires, so the device
resends and the frame archive shows it), and writes the rest.

Backpressure: ``depth_rows`` counts rows offered and not yet durable (the batch being
written included). ``on_high_water`` fires once when depth reaches ``high_water_rows``;
``on_low_water`` once when it then falls below ``low_water_rows`` (hysteresis, so
connections do not flap between paused and reading).

With a spool (storage/spool.py) the writer has three modes:

- ``direct``: the spool is empty; each batch goes to the store. A batch the store has
  not committed ``spool_after_s`` after its first attempt began (retriable failures
  retried inside that window) is appended to the spool instead; once the spool's fsync
  returns, its callbacks fire. A write still running at that point is left to finish
  (it is "adopted"): if it commits, the drain acknowledges the spooled copy without
  writing it again.
- ``spool``: the spool holds batches. New batches are appended behind them, and a drain
  task moves spooled batches to the store in append order (several per write, up to
  ``batch_rows`` rows), retrying with backoff while the store fails, and deletes them.
  When the spool is empty again, batches go direct.
- ``blocked``: a batch can go neither to the store nor to the spool (spool full or its
  disk failing): it stays in memory unanswered and is tried again (the spool, as soon as
  a drained segment frees room); the queue fills and high water pauses reading.

Order: drain first. While anything is spooled, nothing goes to the store directly, so
rows reach the database in the order they arrived, per device and overall. Writing new
batches directly while draining would be faster to catch up, but a device's newer values
would land before its older spooled ones: "latest value" readers would see history
arrive backwards, the frame archive would be out of order, and a resent changed value
could be committed before the version it replaces. The price is one fsync (~0.3 ms here)
per batch while a backlog drains; the drain writes merged batches much faster than a
fleet produces them, so the backlog shrinks.

A spooled entry the database refuses for good (a non-retriable error, isolated by
bisection as above) was already replied to: it is dropped, logged and counted as
``spool_poison``; the frame archive of the other entries keeps the evidence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from storage.base import Entry, StorageError, Store
from storage.spool import Spool, SpoolError, SpoolRecord, SpoolStats

__all__ = ["BatchWriter", "WriterStats"]

DATA_KINDS: Final = frozenset({"data", "constraint"})
"""Error kinds caused by the rows themselves: the only ones for which an already replied
(spooled) entry is given up. Every other failure keeps it in the spool and retries."""
_log = logging.getLogger(__name__)

Callback = Callable[[], None]
BatchObserver = Callable[[int, float, bool, str], None]

_WAITING: Final = 0
_RUNNING: Final = 1
_STOPPING: Final = 2
_STOPPED: Final = 3


@dataclass(slots=True)
class WriterStats:
    """A snapshot of the writer's counters (gateway/ exports them as metrics)."""

    depth_rows: int
    capacity_rows: int
    high_water: bool
    """True between a high-water signal and the following low-water signal."""
    healthy: bool
    """The last write attempt succeeded (or none was made yet)."""
    last_success_monotonic: float | None
    rows_written: int
    entries_written: int
    batches: int
    retries: int
    """Failed attempts that were retried."""
    refused_entries: int
    refused_rows: int
    poison_entries: int
    """Entries dropped because the database refused them (non-retriable error)."""
    poison_rows: int
    callback_errors: int
    errors: dict[str, int]
    """Failed attempts by ``StorageError.kind``."""
    mode: str = "direct"
    """``direct``, ``spool`` (batches go to the spool while it drains) or ``blocked``
    (neither the store nor the spool takes the batch now)."""
    spooled_entries: int = 0
    """Entries made durable by the spool instead of the store."""
    spooled_rows: int = 0
    spool_poison_entries: int = 0
    """Spooled (so already replied) entries the database then refused for good."""
    spool_poison_rows: int = 0
    spool_drain_errors: int = 0
    """Unexpected failures of the drain (a disk error reading or acknowledging the spool);
    each is logged and the drain goes on after a pause."""


class _Item:
    __slots__ = ("callback", "entry", "rows", "since")

    def __init__(self, entry: Entry, callback: Callback | None, rows: int, since: float) -> None:
        self.entry = entry
        self.callback = callback
        self.rows = rows
        self.since = since


class _Adopted:
    """A direct write still running when its batch went to the spool."""

    __slots__ = ("count", "first", "last", "task")

    def __init__(self, task: asyncio.Task[None], entries: Sequence[Entry]) -> None:
        self.task = task
        self.count = len(entries)
        self.first = entries[0].frame
        self.last = entries[-1].frame

    def matches(self, record: SpoolRecord) -> bool:
        entries = record.entries
        return (
            len(entries) == self.count
            and entries[0].frame == self.first
            and entries[-1].frame == self.last
        )


def _retrieve(task: asyncio.Task[None]) -> None:
    """Done callback of an adopted write: its outcome is read, never left unretrieved."""
    if not task.cancelled():
        task.exception()


class BatchWriter:
    """Group commit in front of a store. Bounds are documented in ``StorageConfig``."""

    def __init__(
        self,
        store: Store,
        *,
        queue_rows: int,
        high_water_rows: int,
        low_water_rows: int,
        batch_rows: int,
        linger_s: float,
        retry_initial_s: float,
        retry_max_s: float,
        on_high_water: Callback,
        on_low_water: Callback,
        on_batch: BatchObserver | None = None,
        spool: Spool | None = None,
        spool_after_s: float = 2.0,
    ) -> None:
        if spool_after_s <= 0:
            raise ValueError("spool_after_s must be positive")
        if not 0 <= low_water_rows < high_water_rows <= queue_rows:
            raise ValueError("need 0 <= low_water_rows < high_water_rows <= queue_rows")
        if batch_rows < 1 or linger_s < 0 or retry_initial_s <= 0 or retry_max_s <= 0:
            raise ValueError("batch_rows must be >= 1, linger and retry times positive")
        self._store = store
        self._capacity = queue_rows
        self._high_rows = high_water_rows
        self._low_rows = low_water_rows
        self._batch_rows = batch_rows
        self._linger_s = linger_s
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._on_high = on_high_water
        self._on_low = on_low_water
        self._on_batch = on_batch

        self._pending: deque[_Item] = deque()
        self._pending_rows = 0
        self._depth = 0
        self._high = False
        self._state = _WAITING
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

        self._healthy = True
        self._last_success: float | None = None
        self._rows_written = 0
        self._entries_written = 0
        self._batches = 0
        self._retries = 0
        self._refused_entries = 0
        self._refused_rows = 0
        self._poison_entries = 0
        self._poison_rows = 0
        self._callback_errors = 0
        self._errors: dict[str, int] = {}

        self._spool = spool
        self._spool_after_s = spool_after_s
        self._drain_task: asyncio.Task[None] | None = None
        self._spooled = asyncio.Event()
        """Set by every append (the drain has work) and by stop."""
        self._room = asyncio.Event()
        """Set by every acknowledgement (the spool may have room again)."""
        self._adopted: _Adopted | None = None
        self._blocked = False
        self._spooled_entries = 0
        self._spooled_rows = 0
        self._spool_poison_entries = 0
        self._spool_poison_rows = 0
        self._drain_errors = 0

    # -- the synchronous side ---------------------------------------------------------

    def offer(self, entry: Entry, on_durable: Callback | None = None) -> bool:
        """Queue ``entry``; False (and nothing queued) when the queue is full or stopped."""
        rows = entry.row_count
        if self._state >= _STOPPING or (self._depth + rows > self._capacity and self._depth > 0):
            self._refused_entries += 1
            self._refused_rows += rows
            return False
        was_empty = not self._pending
        self._pending.append(_Item(entry, on_durable, rows, time.monotonic()))
        self._pending_rows += rows
        self._depth += rows
        if not self._high and self._depth >= self._high_rows:
            self._high = True
            self._signal(self._on_high)
        if was_empty or self._pending_rows >= self._batch_rows:
            self._wake.set()
        return True

    @property
    def depth_rows(self) -> int:
        return self._depth

    @property
    def capacity_rows(self) -> int:
        return self._capacity

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def last_success_monotonic(self) -> float | None:
        return self._last_success

    @property
    def retries(self) -> int:
        return self._retries

    @property
    def mode(self) -> str:
        if self._blocked:
            return "blocked"
        if self._spool is not None and self._spool.batches:
            return "spool"
        return "direct"

    def spool_has_room(self) -> bool:
        """A batch the database cannot take now can still be made durable."""
        return self._spool is not None and self._spool.has_room()

    def spool_stats(self) -> SpoolStats | None:
        return None if self._spool is None else self._spool.stats()

    def stats(self) -> WriterStats:
        return WriterStats(
            depth_rows=self._depth,
            capacity_rows=self._capacity,
            high_water=self._high,
            healthy=self._healthy,
            last_success_monotonic=self._last_success,
            rows_written=self._rows_written,
            entries_written=self._entries_written,
            batches=self._batches,
            retries=self._retries,
            refused_entries=self._refused_entries,
            refused_rows=self._refused_rows,
            poison_entries=self._poison_entries,
            poison_rows=self._poison_rows,
            callback_errors=self._callback_errors,
            errors=dict(self._errors),
            mode=self.mode,
            spooled_entries=self._spooled_entries,
            spooled_rows=self._spooled_rows,
            spool_poison_entries=self._spool_poison_entries,
            spool_poison_rows=self._spool_poison_rows,
            spool_drain_errors=self._drain_errors,
        )

    def _signal(self, callback: Callback) -> None:
        try:
            callback()
        except Exception:
            self._callback_errors += 1
            _log.exception("storage writer: water-mark callback failed")

    def _release(self, rows: int) -> None:
        self._depth -= rows
        if self._high and self._depth < self._low_rows:
            self._high = False
            self._signal(self._on_low)

    # -- the background task -----------------------------------------------------------

    async def start(self) -> None:
        """Start writing; with a spool, open it first (recovering what an earlier run
        left, which the drain then moves to the store before anything new)."""
        if self._task is not None:
            return
        loop = asyncio.get_running_loop()
        spool = self._spool
        if spool is not None:
            await spool.open()
            if spool.batches:
                _log.warning(
                    "storage writer: spool %s holds %d batches (%d rows) from an earlier "
                    "run; draining them first",
                    spool.directory,
                    spool.batches,
                    spool.rows,
                )
            self._drain_task = loop.create_task(self._drain(), name="hj212-spool-drain")
        self._state = _RUNNING
        self._task = loop.create_task(self._run(), name="hj212-storage-writer")

    async def stop(self, deadline_s: float) -> int:
        """Flush what can be written within ``deadline_s``; return the rows left unwritten.

        Rows left over were never acknowledged (their callbacks did not fire), so the
        devices that sent them resend them. With a spool, queued batches may end in the
        spool (durable, replied); the drain goes on until the spool is empty, the store
        fails or the deadline passes, and what is still spooled is drained at the next
        start.
        """
        if self._state == _STOPPED:
            return self._depth
        self._state = _STOPPING
        self._wake.set()
        self._spooled.set()
        self._room.set()
        until = time.monotonic() + deadline_s
        for task in (self._task, self._drain_task):
            if task is not None:
                await self._finish(task, until - time.monotonic())
        adopted, self._adopted = self._adopted, None
        if adopted is not None and not adopted.task.done():
            adopted.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, StorageError):
                await adopted.task
        if self._spool is not None:
            if self._spool.batches:
                _log.warning(
                    "storage writer: %d spooled batches (%d rows) left for the next start",
                    self._spool.batches,
                    self._spool.rows,
                )
            await self._spool.close()
        self._state = _STOPPED
        return self._depth

    @staticmethod
    async def _finish(task: asyncio.Task[None], wait_s: float) -> None:
        done, _ = await asyncio.wait({task}, timeout=max(0.0, wait_s))
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        elif not task.cancelled() and task.exception() is not None:
            _log.error("storage writer: task failed", exc_info=task.exception())

    async def _run(self) -> None:
        pending = self._pending
        while True:
            if not pending:
                if self._state >= _STOPPING:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._pending_rows < self._batch_rows and self._state < _STOPPING:
                wait = pending[0].since + self._linger_s - time.monotonic()
                if wait > 0:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._wake.wait()
                    continue
            batch: list[_Item] = []
            rows = 0
            while pending and (not batch or rows + pending[0].rows <= self._batch_rows):
                item = pending.popleft()
                batch.append(item)
                rows += item.rows
            self._pending_rows -= rows
            await self._deliver(batch, rows)

    async def _deliver(self, batch: Sequence[_Item], rows: int) -> None:
        """Make ``batch`` durable: in the store, or (with a spool) in the spool."""
        spool = self._spool
        if spool is None:
            await self._write(batch, rows)
            return
        entries = [item.entry for item in batch]
        delay = self._retry_initial_s
        try:
            while True:
                running: asyncio.Task[None] | None = None
                if not spool.batches:
                    outcome = await self._direct(batch, rows, entries)
                    if outcome is True:
                        return
                    running = outcome or None
                if await self._to_spool(batch, rows, entries, running):
                    return
                if not self._blocked:
                    self._blocked = True
                    _log.error(
                        "storage writer: neither the database nor the spool takes batches; "
                        "holding them unanswered (reading pauses at high water)"
                    )
                if running is not None and await self._settle(running, len(batch), rows):
                    self._durable(batch, rows)
                    return
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._room.wait()
                delay = min(delay * 2, self._retry_max_s)
        finally:
            if self._blocked:
                self._blocked = False
                _log.warning("storage writer: batches are durable again")

    async def _direct(
        self, batch: Sequence[_Item], rows: int, entries: list[Entry]
    ) -> asyncio.Task[None] | bool:
        """Write to the store for up to ``spool_after_s``, retrying retriable failures.

        True: committed (callbacks fired) or isolated as poison. False: failed for the
        whole window. A task: the attempt still running when the window closed.
        """
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self._spool_after_s
        delay = self._retry_initial_s
        while True:
            started = time.monotonic()
            task = loop.create_task(self._store_write(entries))
            try:
                done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - started))
            except asyncio.CancelledError:
                task.cancel()
                raise
            if not done:
                task.add_done_callback(_retrieve)
                return task
            exc = task.exception()
            elapsed = time.monotonic() - started
            if exc is None:
                self._committed(len(batch), rows, elapsed)
                self._durable(batch, rows)
                return True
            assert isinstance(exc, StorageError)
            self._failed(exc, rows, elapsed)
            if not exc.retriable:
                await self._isolate(batch, exc)
                return True
            self._retries += 1
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, self._retry_max_s)
            if time.monotonic() >= deadline:
                return False

    async def _to_spool(
        self,
        batch: Sequence[_Item],
        rows: int,
        entries: list[Entry],
        running: asyncio.Task[None] | None,
    ) -> bool:
        """Append ``batch`` to the spool and fire its callbacks; False if refused."""
        assert self._spool is not None
        try:
            await self._spool.append(entries)
        except SpoolError as exc:
            if not self._blocked:
                _log.warning("storage writer: spool refused a batch of %d rows: %s", rows, exc)
            return False
        self._spooled_entries += len(batch)
        self._spooled_rows += rows
        if running is not None:
            self._adopted = _Adopted(running, entries)
        self._spooled.set()
        self._durable(batch, rows)
        return True

    async def _settle(self, task: asyncio.Task[None], entries: int, rows: int) -> bool:
        """Wait for a running write; True (and counted) if it committed."""
        started = time.monotonic()
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            # Always propagate: a cancellation that arrives as the write finishes must still
            # stop this task (stop() waits for it).
            if not task.done():
                task.cancel()
            raise
        except StorageError as exc:
            self._failed(exc, rows, time.monotonic() - started)
            return False
        self._committed(entries, rows, time.monotonic() - started)
        return True

    # -- the drain ------------------------------------------------------------------------

    async def _drain(self) -> None:
        """Move spooled batches into the store, oldest first, then forget them.

        A disk error reading or acknowledging the spool must not end the drain: while the
        spool holds anything, batches go nowhere else, so a dead drain would stop every
        write to the database. It is logged and counted, and the drain tries again."""
        spool = self._spool
        assert spool is not None
        delay = self._retry_initial_s
        while True:
            try:
                if not await self._drain_step(spool):
                    return
                delay = self._retry_initial_s
            except asyncio.CancelledError:
                raise
            except Exception:
                self._drain_errors += 1
                _log.exception(
                    "storage writer: draining the spool failed; retrying in %.2f s", delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)

    async def _drain_step(self, spool: Spool) -> bool:
        """One step of the drain; False when it is to end (stopping)."""
        if not spool.batches:
            if self._state >= _STOPPING:
                return False
            self._spooled.clear()
            if not spool.batches:
                await self._spooled.wait()
            return True
        before = spool.batches
        batch = await spool.read(self._batch_rows)
        if not batch.records:
            # Only corrupt bytes were left: acknowledging them deletes their segment.
            await spool.ack(batch)
            self._room.set()
            if spool.batches == before:
                _log.error("storage writer: spool depth %d but nothing to read", before)
                await asyncio.sleep(self._retry_max_s)
            return True
        adopted = self._adopted
        if adopted is not None and adopted.matches(batch.records[0]):
            self._adopted = None
            first = batch.records[0]
            if await self._settle(adopted.task, len(first.entries), first.rows):
                await spool.ack(batch.head())
                batch = batch.tail()
        if batch.records and not await self._commit(batch.entries, batch.rows):
            return False  # stopping while the store fails: the rest waits in the spool
        await spool.ack(batch)
        self._room.set()
        return True

    async def _commit(self, entries: list[Entry], rows: int) -> bool:
        """Write spooled entries until they are committed (poison isolated and dropped);
        False only when stopping while the store fails."""
        delay = self._retry_initial_s
        while True:
            started = time.monotonic()
            try:
                await self._store_write(entries)
            except StorageError as exc:
                self._failed(exc, rows, time.monotonic() - started)
                if not exc.retriable and exc.kind in DATA_KINDS:
                    return await self._isolate_spooled(entries, exc)
                # Anything else (the server, the schema, permissions, a store bug) is not
                # the data's fault: these rows were replied to, so they wait in the spool
                # until the cause is mended, however long that takes.
                if self._state >= _STOPPING:
                    return False
                self._retries += 1
                _log.warning(
                    "storage writer: draining %d spooled rows failed (%s), retrying in %.2f s",
                    rows,
                    exc.kind,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
                continue
            self._committed(len(entries), rows, time.monotonic() - started)
            return True

    async def _isolate_spooled(self, entries: list[Entry], exc: StorageError) -> bool:
        """Bisect a spooled batch the database refuses for its data, down to the entry that
        causes it; only that entry is dropped (halves failing otherwise are retried)."""
        if len(entries) == 1:
            rows = entries[0].row_count
            self._spool_poison_entries += 1
            self._spool_poison_rows += rows
            _log.error(
                "storage writer: dropped a spooled (already replied) entry of %d rows "
                "the database refuses: %s",
                rows,
                exc,
            )
            return True
        half = len(entries) // 2
        for part in (entries[:half], entries[half:]):
            if not await self._commit(part, sum(e.row_count for e in part)):
                return False
        return True

    # -- one write ------------------------------------------------------------------------

    async def _store_write(self, entries: Sequence[Entry]) -> None:
        try:
            await self._store.write(entries)
        except StorageError:
            raise
        except Exception as unexpected:
            # A store bug or a malformed entry: never retried, isolated like data.
            raise StorageError(
                f"write: {type(unexpected).__name__}: {unexpected}",
                retriable=False,
                kind="other",
            ) from unexpected

    def _committed(self, entries: int, rows: int, elapsed: float) -> None:
        self._healthy = True
        self._last_success = time.monotonic()
        self._batches += 1
        self._rows_written += rows
        self._entries_written += entries
        self._observe(rows, elapsed, ok=True, kind="")

    def _failed(self, exc: StorageError, rows: int, elapsed: float) -> None:
        self._healthy = False
        self._errors[exc.kind] = self._errors.get(exc.kind, 0) + 1
        self._observe(rows, elapsed, ok=False, kind=exc.kind)

    def _durable(self, batch: Sequence[_Item], rows: int) -> None:
        """The batch is durable: fire its callbacks in offer order, release its rows."""
        for item in batch:
            if item.callback is not None:
                try:
                    item.callback()
                except Exception:
                    self._callback_errors += 1
                    _log.exception("storage writer: on_durable callback failed")
        self._release(rows)

    async def _write(self, batch: Sequence[_Item], rows: int) -> None:
        """Write ``batch`` until it is durable, bisecting around entries the database refuses."""
        delay = self._retry_initial_s
        entries = [item.entry for item in batch]
        while True:
            started = time.monotonic()
            try:
                await self._store_write(entries)
            except StorageError as exc:
                self._failed(exc, rows, time.monotonic() - started)
                if not exc.retriable:
                    await self._isolate(batch, exc)
                    return
                self._retries += 1
                _log.warning(
                    "storage writer: batch of %d rows failed (%s), retrying in %.2f s",
                    rows,
                    exc.kind,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
                continue
            self._committed(len(batch), rows, time.monotonic() - started)
            self._durable(batch, rows)
            return

    async def _isolate(self, batch: Sequence[_Item], exc: StorageError) -> None:
        if len(batch) == 1:
            item = batch[0]
            self._poison_entries += 1
            self._poison_rows += item.rows
            _log.error(
                "storage writer: dropped an entry of %d rows the database refuses: %s",
                item.rows,
                exc,
            )
            self._release(item.rows)
            return
        half = len(batch) // 2
        for part in (batch[:half], batch[half:]):
            await self._deliver(part, sum(item.rows for item in part))

    def _observe(self, rows: int, seconds: float, *, ok: bool, kind: str) -> None:
        if self._on_batch is None:
            return
        try:
            self._on_batch(rows, seconds, ok, kind)
        except Exception:
            self._callback_errors += 1
            _log.exception("storage writer: on_batch observer failed")
