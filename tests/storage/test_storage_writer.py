"""BatchWriter: backpressure signals, group commit, durability callbacks, retries, poison."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from storekit import RECEIVED, entry, frame, realtime

from storage.base import Entry, FrameRow, PresenceRow, StorageError, StoreStats
from storage.postgres import PostgresStore
from storage.writer import BatchWriter

WAIT_S = 30.0
"""Upper bound for things that must happen (not a timing assertion: only a hang guard)."""


def item(i: int, rows: int = 1) -> Entry:
    f = FrameRow(RECEIVED + i, f"e{i}", 0, "M", "32", "2011", None, True, None, (), b"x")
    return Entry(f, readings=[None] * (rows - 1))  # type: ignore[list-item]


def ident(e: Entry) -> int:
    return int(e.frame.peer[1:].split("\x00")[0])


class FakeStore:
    kind = "fake"

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.attempts = 0
        self.gate: asyncio.Event | None = None
        self.failures: list[StorageError] = []
        self.poison: set[int] = set()

    async def write(self, entries: Sequence[Entry]) -> None:
        self.attempts += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            raise self.failures.pop(0)
        if self.poison.intersection(ident(e) for e in entries):
            raise StorageError("refused", retriable=False, kind="data")
        self.batches.append([ident(e) for e in entries])

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
    def __init__(self, store: FakeStore | PostgresStore, **kw: float) -> None:
        self.signals: list[tuple[str, int]] = []
        self.durable: list[int] = []
        self.observed: list[tuple[int, bool, str]] = []
        self.done = asyncio.Event()
        self.expect = -1
        args: dict[str, float] = {
            "queue_rows": 100,
            "high_water_rows": 70,
            "low_water_rows": 40,
            "batch_rows": 1000,
            "linger_s": 0.0,
            "retry_initial_s": 0.001,
            "retry_max_s": 0.004,
        }
        args.update(kw)
        self.writer = BatchWriter(
            store,  # type: ignore[arg-type]
            queue_rows=int(args["queue_rows"]),
            high_water_rows=int(args["high_water_rows"]),
            low_water_rows=int(args["low_water_rows"]),
            batch_rows=int(args["batch_rows"]),
            linger_s=args["linger_s"],
            retry_initial_s=args["retry_initial_s"],
            retry_max_s=args["retry_max_s"],
            on_high_water=lambda: self.signals.append(("high", self.writer.depth_rows)),
            on_low_water=lambda: self.signals.append(("low", self.writer.depth_rows)),
            on_batch=lambda rows, s, ok, kind: self.observed.append((rows, ok, kind)),
        )

    def offer(self, e: Entry) -> bool:
        i = ident(e)

        def durable() -> None:
            self.durable.append(i)
            if i == self.expect:
                self.done.set()

        return self.writer.offer(e, durable)

    async def until(self, last: int) -> None:
        self.expect = last
        if last not in self.durable:
            await asyncio.wait_for(self.done.wait(), WAIT_S)


async def test_high_and_low_water_fire_once_each_with_hysteresis() -> None:
    store = FakeStore()
    h = Harness(store, batch_rows=30)
    for i in range(10):
        assert h.offer(item(i, rows=10))
    assert h.signals == [("high", 70)]
    assert h.writer.depth_rows == 100
    assert not h.offer(item(10, rows=10))  # full: refused, nothing queued
    assert h.writer.stats().refused_rows == 10
    assert h.writer.depth_rows == 100
    await h.writer.start()
    await h.until(9)
    assert h.signals == [("high", 70), ("low", 10)]
    assert store.batches == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert h.writer.depth_rows == 0
    for i in range(20, 27):
        h.offer(item(i, rows=10))
    assert h.signals[-1] == ("high", 70)
    await h.until(26)
    assert h.signals == [("high", 70), ("low", 10), ("high", 70), ("low", 10)]
    assert await h.writer.stop(WAIT_S) == 0


async def test_linger_flushes_a_small_batch() -> None:
    store = FakeStore()
    h = Harness(store, linger_s=0.02)
    await h.writer.start()
    h.offer(item(1))
    await h.until(1)
    assert store.batches == [[1]]
    await h.writer.stop(WAIT_S)


async def test_full_batch_goes_without_waiting_for_linger() -> None:
    store = FakeStore()
    h = Harness(store, linger_s=3600.0, batch_rows=20)
    await h.writer.start()
    h.offer(item(1, rows=10))
    h.offer(item(2, rows=10))
    h.offer(item(3, rows=10))  # waits for linger (or stop)
    await h.until(2)
    assert store.batches == [[1, 2]]
    assert h.writer.depth_rows == 10
    assert await h.writer.stop(WAIT_S) == 0
    assert store.batches == [[1, 2], [3]]
    assert h.durable == [1, 2, 3]


async def test_callbacks_only_after_the_write_returns_in_offer_order() -> None:
    store = FakeStore()
    store.gate = asyncio.Event()
    h = Harness(store)
    await h.writer.start()
    for i in range(3):
        h.offer(item(i))
    await _wait_for(lambda: store.attempts > 0)
    assert h.durable == []
    assert h.writer.depth_rows == 3
    store.gate.set()
    await h.until(2)
    assert h.durable == [0, 1, 2]
    await h.writer.stop(WAIT_S)


async def test_retriable_errors_retry_the_same_batch_until_it_succeeds() -> None:
    store = FakeStore()
    store.failures = [StorageError("down", retriable=True, kind="connection") for _ in range(3)]
    h = Harness(store)
    await h.writer.start()
    h.offer(item(1))
    h.offer(item(2))
    await h.until(2)
    assert store.attempts == 4
    assert store.batches == [[1, 2]]
    assert h.writer.retries == 3
    assert h.writer.healthy
    assert h.writer.last_success_monotonic is not None
    assert h.observed == [(2, False, "connection")] * 3 + [(2, True, "")]
    assert h.writer.stats().errors == {"connection": 3}
    await h.writer.stop(WAIT_S)


async def test_poison_entries_are_isolated_and_dropped() -> None:
    store = FakeStore()
    store.poison = {2, 5}
    h = Harness(store)
    await h.writer.start()
    for i in range(8):
        h.offer(item(i))
    await h.until(7)
    assert h.durable == [0, 1, 3, 4, 6, 7]
    assert sorted(i for b in store.batches for i in b) == [0, 1, 3, 4, 6, 7]
    stats = h.writer.stats()
    assert (stats.poison_entries, stats.poison_rows, stats.entries_written) == (2, 2, 6)
    assert h.writer.depth_rows == 0
    assert await h.writer.stop(WAIT_S) == 0


async def test_stop_drains_everything_it_can() -> None:
    store = FakeStore()
    h = Harness(store, linger_s=3600.0)
    await h.writer.start()
    for i in range(5):
        h.offer(item(i, rows=2))
    assert await h.writer.stop(WAIT_S) == 0
    assert h.durable == [0, 1, 2, 3, 4]
    assert not h.offer(item(9))


async def test_stop_reports_rows_it_could_not_write() -> None:
    store = FakeStore()
    store.gate = asyncio.Event()  # the database never answers
    h = Harness(store)
    await h.writer.start()
    for i in range(3):
        h.offer(item(i, rows=2))
    await _wait_for(lambda: store.attempts > 0)
    assert await h.writer.stop(0.05) == 6
    assert h.durable == []


async def test_unexpected_exception_does_not_kill_the_writer() -> None:
    class Broken(FakeStore):
        async def write(self, entries: Sequence[Entry]) -> None:
            if any(ident(e) == 1 for e in entries):
                raise RuntimeError("bug")
            await super().write(entries)

    store = Broken()
    h = Harness(store)
    await h.writer.start()
    h.offer(item(0))
    h.offer(item(1))
    h.offer(item(2))
    await h.until(2)
    assert h.durable == [0, 2]
    assert h.writer.stats().errors == {"other": 3}  # [0,1,2], then [1,2], then [1]
    await h.writer.stop(WAIT_S)


# -- against PostgreSQL ----------------------------------------------------------------


async def test_poison_row_bisected_on_postgresql(pg_migrated_dsn: str) -> None:
    store = PostgresStore(pg_migrated_dsn)
    await store.open()
    h = Harness(store)
    try:
        await h.writer.start()
        for i in range(6):
            e = entry(realtime(f"M{i}", "20240315103000", {"w01018": "1"}), RECEIVED + i)
            peer = f"e{i}\x00bad" if i == 3 else f"e{i}"
            h.offer(Entry(e.frame._replace(peer=peer), e.readings))
        h.expect = 5
        await asyncio.wait_for(h.done.wait(), WAIT_S)
        assert await h.writer.stop(WAIT_S) == 0
    finally:
        await store.close()
    assert h.durable == [0, 1, 2, 4, 5]
    assert h.writer.stats().poison_entries == 1
    from storekit import pg_fetch

    rows = await pg_fetch(pg_migrated_dsn, "SELECT mn FROM hj212.reading ORDER BY mn")
    assert rows == [("M0",), ("M1",), ("M2",), ("M4",), ("M5",)]


async def _wait_for(condition: Callable[[], bool]) -> None:
    """Poll until ``condition`` holds; fails only if it never does within WAIT_S."""
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0.01)


@pytest.mark.slow
async def test_writes_wait_for_the_database_to_come_back(throwaway_cluster: Any) -> None:
    from storekit import pg_fetch

    cluster = throwaway_cluster
    store = PostgresStore(cluster.dsn, write_timeout_s=5.0)
    await store.open()
    await store.migrate()
    h = Harness(store, retry_initial_s=0.05, retry_max_s=0.2)
    await h.writer.start()
    try:
        h.offer(entry(realtime("M1", "20240315103000", {"w01018": "1"}), RECEIVED, peer="e0"))
        await h.until(0)
        await asyncio.to_thread(cluster.stop)
        h.offer(entry(realtime("M2", "20240315103000", {"w01018": "2"}), RECEIVED + 1, peer="e1"))
        h.offer(Entry(frame(None, RECEIVED + 2, ok=False, peer="e2")))
        await _wait_for(lambda: h.writer.retries >= 2)
        assert h.durable == [0]
        assert not h.writer.healthy
        assert h.writer.depth_rows == 3
        await asyncio.to_thread(cluster.start)
        await _wait_for(lambda: len(h.durable) == 3)
        assert h.durable == [0, 1, 2]
        assert h.writer.healthy
        assert await h.writer.stop(WAIT_S) == 0
    finally:
        await h.writer.stop(1.0)
        await store.close()
    rows = await pg_fetch(cluster.dsn, "SELECT mn, rtd FROM hj212.reading ORDER BY mn")
    assert rows == [("M1", 1.0), ("M2", 2.0)]
    assert await pg_fetch(cluster.dsn, "SELECT count(*) FROM hj212.frame") == [(3,)]
