"""BatchWriter with a spool: failing or slow store -> spool -> replies; drain in order;
spool full -> no replies and high water; recovery at start; poison while draining."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

from test_spool import ident, make_entry, segments

from storage.base import Entry, PresenceRow, StorageError, StoreStats
from storage.spool import Spool
from storage.writer import BatchWriter

WAIT_S = 30.0
"""Upper bound for things that must happen (a hang guard, not a timing assertion)."""
ROWS = 4  # rows per test entry: the frame, one reading, one info, one status


def down() -> StorageError:
    return StorageError("down", retriable=True, kind="connection")


class FakeStore:
    """Records committed batches by entry number; can fail, hang or refuse entries."""

    kind = "fake"

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.attempts = 0
        self.failing = False
        self.gate: asyncio.Event | None = None
        self.poison: set[int] = set()
        self.refusal: StorageError | None = None
        """Raised for every write while set (a server-side refusal, not the data's)."""

    async def write(self, entries: Sequence[Entry]) -> None:
        self.attempts += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise down()
        if self.refusal is not None:
            raise self.refusal
        if self.poison.intersection(ident(e) for e in entries):
            raise StorageError("refused", retriable=False, kind="data")
        self.batches.append([ident(e) for e in entries])

    @property
    def committed(self) -> list[int]:
        return [i for b in self.batches for i in b]

    async def open(self) -> None: ...
    async def migrate(self) -> list[str]:
        return []

    async def write_presence(self, rows: Sequence[PresenceRow]) -> None: ...
    async def ping(self) -> bool:
        return True

    async def fetch_frames(
        self, *, mn: str | None, since_us: int | None, limit: int
    ) -> list[tuple[int, bytes]]:
        return []

    async def maintain(self) -> list[str]:
        return []

    def stats(self) -> StoreStats:
        return StoreStats()

    async def close(self) -> None: ...


class Harness:
    def __init__(
        self, store: FakeStore, directory: Path, *, queue_rows: int = 1_000, **spool_kw: int
    ) -> None:
        self.durable: list[int] = []
        self.signals: list[str] = []
        self.spool = Spool(
            directory,
            max_bytes=spool_kw.get("max_bytes", 64 * 1024 * 1024),
            segment_bytes=spool_kw.get("segment_bytes", 1024 * 1024),
        )
        self.writer = BatchWriter(
            store,  # type: ignore[arg-type]
            queue_rows=queue_rows,
            high_water_rows=int(queue_rows * 0.7),
            low_water_rows=int(queue_rows * 0.4),
            batch_rows=10 * ROWS,
            linger_s=0.0,
            retry_initial_s=0.005,
            retry_max_s=0.02,
            on_high_water=lambda: self.signals.append("high"),
            on_low_water=lambda: self.signals.append("low"),
            spool=self.spool,
            spool_after_s=0.1,
        )

    def offer(self, i: int) -> bool:
        return self.writer.offer(make_entry(i, readings=1), lambda: self.durable.append(i))

    def offer_many(self, numbers: range) -> None:
        for i in numbers:
            assert self.offer(i)


async def until(condition: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), WAIT_S)


async def test_failing_store_spools_replies_then_drains_in_order(tmp_path: Path) -> None:
    store = FakeStore()
    store.failing = True
    h = Harness(store, tmp_path)
    await h.writer.start()
    h.offer_many(range(30))
    await until(lambda: len(h.durable) == 30)  # replied: durable in the spool
    assert h.durable == list(range(30))
    assert store.batches == []
    stats = h.writer.stats()
    assert stats.mode == "spool"
    assert (stats.spooled_entries, stats.spooled_rows) == (30, 30 * ROWS)
    assert h.writer.depth_rows == 0  # spooled rows no longer wait in memory
    assert h.spool.batches == 3
    assert h.writer.spool_has_room()

    h.offer_many(range(30, 40))  # while the backlog waits, new batches queue behind it
    await until(lambda: len(h.durable) == 40)
    assert store.batches == []
    store.failing = False
    await until(lambda: h.spool.batches == 0)
    assert store.committed == list(range(40))  # database order = arrival order
    assert h.writer.mode == "direct"
    assert segments(tmp_path) == []
    h.offer_many(range(40, 45))
    await until(lambda: len(h.durable) == 45)
    assert store.committed == list(range(45))
    assert h.spool.stats().appended_batches == 4  # the last five went direct
    assert h.spool.stats().drained_rows == 40 * ROWS
    assert await h.writer.stop(WAIT_S) == 0


async def test_slow_store_spools_and_the_running_write_is_adopted(tmp_path: Path) -> None:
    store = FakeStore()
    store.gate = asyncio.Event()  # commits hang
    h = Harness(store, tmp_path)
    await h.writer.start()
    h.offer_many(range(5))
    await until(lambda: len(h.durable) == 5)  # replied after spool_after_s, not after commit
    assert store.batches == []
    assert store.attempts == 1
    h.offer_many(range(5, 8))  # goes behind the spooled batch, not to the store
    await until(lambda: len(h.durable) == 8)
    assert store.attempts == 1
    store.gate.set()
    await until(lambda: h.spool.batches == 0)
    # The first batch committed by its own (adopted) write, not written a second time.
    assert store.batches == [[0, 1, 2, 3, 4], [5, 6, 7]]
    assert await h.writer.stop(WAIT_S) == 0


async def test_full_spool_means_no_replies_and_high_water(tmp_path: Path) -> None:
    store = FakeStore()
    store.failing = True
    h = Harness(store, tmp_path, queue_rows=400, max_bytes=64 * 1024, segment_bytes=16 * 1024)
    await h.writer.start()
    offered = 0
    while not ("high" in h.signals and h.writer.mode == "blocked") and offered < 10_000:
        if h.offer(offered):
            offered += 1
        await asyncio.sleep(0.001)
    assert "high" in h.signals  # the queue filled: reading pauses
    assert h.writer.mode == "blocked"
    assert not h.writer.spool_has_room()
    replied = len(h.durable)
    assert replied < offered
    assert h.spool.stats().appended_rows == replied * ROWS  # every reply was spooled
    assert h.spool.stats().refused_full >= 1
    store.failing = False
    await until(lambda: len(h.durable) == offered)
    await until(lambda: h.spool.batches == 0)
    assert h.durable == list(range(offered))
    assert store.committed == list(range(offered))
    assert h.signals[-1] == "low"
    assert h.writer.mode == "direct"
    assert await h.writer.stop(WAIT_S) == 0


async def test_spool_left_by_an_earlier_run_is_drained_first(tmp_path: Path) -> None:
    store = FakeStore()
    store.failing = True
    first = Harness(store, tmp_path)
    await first.writer.start()
    first.offer_many(range(12))
    await until(lambda: len(first.durable) == 12)
    assert await first.writer.stop(0.2) == 0  # the database is still down: all spooled
    assert first.spool.batches == 2

    store.failing = False
    second = Harness(store, tmp_path)
    second.offer_many(range(12, 15))  # offered before start: must not overtake the spool
    await second.writer.start()
    assert second.spool.stats().recovered_batches == 2
    await until(lambda: len(second.durable) == 3 and second.spool.batches == 0)
    assert store.committed == list(range(15))
    assert await second.writer.stop(WAIT_S) == 0


async def test_spooled_entry_the_database_refuses_is_dropped_and_counted(
    tmp_path: Path,
) -> None:
    store = FakeStore()
    store.failing = True
    h = Harness(store, tmp_path)
    await h.writer.start()
    h.offer_many(range(10))
    await until(lambda: len(h.durable) == 10)
    store.poison = {4}
    store.failing = False
    await until(lambda: h.spool.batches == 0)
    assert store.committed == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    stats = h.writer.stats()
    assert (stats.spool_poison_entries, stats.spool_poison_rows) == (1, ROWS)
    assert await h.writer.stop(WAIT_S) == 0


async def test_spooled_rows_wait_out_a_refusal_that_is_not_the_datas(tmp_path: Path) -> None:
    """A read-only standby after a failover, a revoked privilege, a missing table: the
    database refuses every batch, not one entry. Spooled (replied) rows stay in the spool
    until it accepts them again; none is dropped as poison."""
    store = FakeStore()
    store.failing = True
    h = Harness(store, tmp_path)
    await h.writer.start()
    h.offer_many(range(10))
    await until(lambda: len(h.durable) == 10)  # replied: they are in the spool
    store.refusal = StorageError("permission denied", retriable=False, kind="permission")
    store.failing = False
    await until(lambda: store.attempts > 20)  # it keeps trying, with backoff
    assert h.spool.batches > 0
    assert h.writer.stats().spool_poison_entries == 0
    store.refusal = None
    await until(lambda: h.spool.batches == 0)
    assert store.committed == list(range(10))
    assert await h.writer.stop(WAIT_S) == 0


async def test_a_disk_error_while_draining_does_not_end_the_drain(tmp_path: Path) -> None:
    store = FakeStore()
    store.failing = True
    h = Harness(store, tmp_path)
    real_read = h.spool.read
    failures = [OSError(5, "Input/output error")]

    async def flaky_read(max_rows: int) -> object:
        if failures:
            raise failures.pop()  # the first read of the spool hits a bad sector
        return await real_read(max_rows)

    h.spool.read = flaky_read  # type: ignore[method-assign]
    await h.writer.start()
    h.offer_many(range(10))
    await until(lambda: len(h.durable) == 10)
    store.failing = False
    await until(lambda: h.spool.batches == 0)
    assert store.committed == list(range(10))
    assert h.writer.stats().spool_drain_errors == 1
    # And the writer is back to direct writes.
    h.offer_many(range(10, 12))
    await until(lambda: store.committed[-2:] == [10, 11])
    assert await h.writer.stop(WAIT_S) == 0


async def test_stop_with_the_database_down_spools_what_is_queued(tmp_path: Path) -> None:
    store = FakeStore()
    store.failing = True
    h = Harness(store, tmp_path)
    h.offer_many(range(25))
    await h.writer.start()
    assert await h.writer.stop(WAIT_S) == 0
    assert h.durable == list(range(25))
    reopened = Spool(tmp_path, max_bytes=64 * 1024 * 1024, segment_bytes=1024 * 1024)
    await reopened.open()
    assert reopened.batches == 3
    await reopened.close()
