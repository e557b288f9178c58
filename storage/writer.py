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

__all__ = ["BatchWriter", "WriterStats"]

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


class _Item:
    __slots__ = ("callback", "entry", "rows", "since")

    def __init__(self, entry: Entry, callback: Callback | None, rows: int, since: float) -> None:
        self.entry = entry
        self.callback = callback
        self.rows = rows
        self.since = since


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
    ) -> None:
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
        if self._task is not None:
            return
        self._state = _RUNNING
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="hj212-storage-writer"
        )

    async def stop(self, deadline_s: float) -> int:
        """Flush what can be written within ``deadline_s``; return the rows left unwritten.

        Rows left over were never acknowledged (their callbacks did not fire), so the
        devices that sent them resend them.
        """
        if self._state == _STOPPED:
            return self._depth
        self._state = _STOPPING
        self._wake.set()
        task = self._task
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=deadline_s)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            elif not task.cancelled() and task.exception() is not None:
                _log.error("storage writer: task failed", exc_info=task.exception())
        self._state = _STOPPED
        return self._depth

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
                        await asyncio.wait_for(self._wake.wait(), wait)
                    continue
            batch: list[_Item] = []
            rows = 0
            while pending and (not batch or rows + pending[0].rows <= self._batch_rows):
                item = pending.popleft()
                batch.append(item)
                rows += item.rows
            self._pending_rows -= rows
            await self._write(batch, rows)

    async def _write(self, batch: Sequence[_Item], rows: int) -> None:
        """Write ``batch`` until it is durable, bisecting around entries the database refuses."""
        delay = self._retry_initial_s
        entries = [item.entry for item in batch]
        while True:
            started = time.monotonic()
            try:
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
            except StorageError as exc:
                elapsed = time.monotonic() - started
                self._healthy = False
                self._errors[exc.kind] = self._errors.get(exc.kind, 0) + 1
                self._observe(rows, elapsed, ok=False, kind=exc.kind)
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
            elapsed = time.monotonic() - started
            self._healthy = True
            self._last_success = time.monotonic()
            self._batches += 1
            self._rows_written += rows
            self._entries_written += len(batch)
            self._observe(rows, elapsed, ok=True, kind="")
            for item in batch:
                if item.callback is not None:
                    try:
                        item.callback()
                    except Exception:
                        self._callback_errors += 1
                        _log.exception("storage writer: on_durable callback failed")
            self._release(rows)
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
            await self._write(part, sum(item.rows for item in part))

    def _observe(self, rows: int, seconds: float, *, ok: bool, kind: str) -> None:
        if self._on_batch is None:
            return
        try:
            self._on_batch(rows, seconds, ok, kind)
        except Exception:
            self._callback_errors += 1
            _log.exception("storage writer: on_batch observer failed")
