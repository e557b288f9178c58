"""The forwarding outbox on both stores: rows written with their frames, once per upstream
and frame, read in order, settled, counted and pruned."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from storekit import RECEIVED, entry, realtime, us

from storage.base import Entry, ForwardTo, StorageError, Store
from storage.outbox import Settled, outbox_store
from storage.outbox_rows import frame_digest, outbox_rows
from storage.postgres import PostgresStore
from storage.sqlite import SqliteStore

MN1 = "88888880000000000000F001"
MN2 = "88888880000000000000F002"


@pytest.fixture(params=["sqlite", "postgres"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(kind, path or DSN); the PostgreSQL fixtures are synchronous, so resolved here."""
    if request.param == "sqlite":
        return "sqlite", str(tmp_path / "hj212.sqlite3")
    return "postgres", str(request.getfixturevalue("pg_clean_dsn"))


@pytest.fixture
async def store(where: tuple[str, str]) -> AsyncIterator[Store]:
    kind, target = where
    s: Store = (
        SqliteStore(target) if kind == "sqlite" else PostgresStore(target, pool_min=1, pool_max=2)
    )
    await s.open()
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()


def forwarded(
    mn: str, minute: int, upstreams: tuple[str, ...] = ("a", "b"), *, worker: int = 0
) -> Entry:
    """A stored upload of ``mn`` at 10:<minute> forwarded to ``upstreams``."""
    e = entry(realtime(mn, f"202403151{minute // 60}{minute % 60:02d}00", {"w01018": str(minute)}),
              RECEIVED + minute)  # fmt: skip
    assert e.frame is not None
    e.frame = e.frame._replace(worker=worker, raw=f"{e.frame.raw!r}/{minute}".encode())
    e.forward = ForwardTo(upstreams, confirm=True)
    return e


async def test_rows_are_written_once_per_upstream_and_frame(store: Store) -> None:
    outbox = outbox_store(store)
    first = [forwarded(MN1, 1), forwarded(MN2, 1), forwarded(MN1, 2)]
    await store.write(first)
    # The same frames again (a device's resend, a batch redelivered from the spool), and a
    # frame repeated inside one batch: nothing new is queued.
    await store.write([*first, forwarded(MN1, 3), forwarded(MN1, 3)])
    for upstream in ("a", "b"):
        rows = await outbox.load(upstream, 0, 0, 100)
        assert [(r.mn, r.raw) for r in rows] == [
            (e.frame.mn, e.frame.raw)  # type: ignore[union-attr]
            for e in [*first, forwarded(MN1, 3)]
        ]
        assert all(r.confirm for r in rows)
        assert [r.received_at_us for r in rows] == [RECEIVED + m for m in (1, 1, 2, 3)]
    assert await outbox.backlog("a", 0) == (4, RECEIVED + 1)


async def test_frames_without_upstreams_add_no_rows(store: Store) -> None:
    plain = entry(realtime(MN1, "20240315103000", {"w01018": "1"}), RECEIVED)
    await store.write([plain, forwarded(MN2, 5, ("b",))])
    outbox = outbox_store(store)
    assert await outbox.load("a", 0, 0, 10) == []
    assert [r.mn for r in await outbox.load("b", 0, 0, 10)] == [MN2]


async def test_load_follows_the_cursor_and_the_worker(store: Store) -> None:
    outbox = outbox_store(store)
    await store.write([forwarded(MN1, m, ("a",), worker=m % 2) for m in range(10)])
    mine = await outbox.load("a", 0, 0, 3)
    assert [r.received_at_us - RECEIVED for r in mine] == [0, 2, 4]
    rest = await outbox.load("a", 0, mine[-1].id, 100)
    assert [r.received_at_us - RECEIVED for r in rest] == [6, 8]
    theirs = await outbox.load("a", 1, 0, 100)
    assert [r.received_at_us - RECEIVED for r in theirs] == [1, 3, 5, 7, 9]


async def test_settled_rows_leave_the_queue_and_their_bytes(store: Store) -> None:
    outbox = outbox_store(store)
    await store.write([forwarded(MN1, m, ("a",)) for m in range(3)])
    rows = await outbox.load("a", 0, 0, 10)
    await outbox.settle(
        [
            Settled(rows[0].id, "9014", 2, RECEIVED + 100, RECEIVED + 200),
            Settled(rows[1].id, "written", 1, RECEIVED + 101, RECEIVED + 201),
        ]
    )
    left = await outbox.load("a", 0, 0, 10)
    assert [r.id for r in left] == [rows[2].id]
    assert await outbox.backlog("a", 0) == (1, rows[2].received_at_us)
    settled = await _rows(store, "a")
    assert settled[0][1:] == ("9014", 2, True, True)
    assert settled[1][1:] == ("written", 1, True, True)
    assert settled[2][1:] == (None, 0, False, False)
    # A settled frame sent again by its device is still recognised: not queued again.
    await store.write([forwarded(MN1, 0, ("a",))])
    assert [r.id for r in await outbox.load("a", 0, 0, 10)] == [rows[2].id]


async def test_older_rows_of_another_worker_hold_a_device(store: Store) -> None:
    outbox = outbox_store(store)
    # MN1 was at worker 1 (two frames still pending there), then reconnected to worker 0.
    await store.write([forwarded(MN1, 1, ("a",), worker=1), forwarded(MN1, 2, ("a",), worker=1)])
    await store.write([forwarded(MN1, 3, ("a",)), forwarded(MN2, 3, ("a",))])
    mine = await outbox.load("a", 0, 0, 10)
    first = {r.mn: r.id for r in reversed(mine)}
    assert await outbox.older_elsewhere("a", 0, first) == {MN1}
    # Worker 1 sees nothing older elsewhere: its frames are the oldest.
    theirs = await outbox.load("a", 1, 0, 10)
    assert await outbox.older_elsewhere("a", 1, {MN1: theirs[0].id}) == set()
    await outbox.settle([Settled(r.id, "9014", 1, None, RECEIVED) for r in theirs])
    assert await outbox.older_elsewhere("a", 0, first) == set()
    assert await outbox.older_elsewhere("a", 0, {}) == set()


async def test_prune_deletes_only_settled_rows_queued_before_the_cutoff(store: Store) -> None:
    outbox = outbox_store(store)
    await store.write([forwarded(MN1, m, ("a",)) for m in range(5)])
    rows = await outbox.load("a", 0, 0, 10)
    await outbox.settle([Settled(r.id, "9014", 1, None, RECEIVED) for r in rows[:3]])
    far_future = us("2100-01-01 00:00:00")
    assert await outbox.prune(RECEIVED, 100) == 0  # queued now, after the cutoff
    assert await outbox.prune(far_future, 2) == 2
    assert await outbox.prune(far_future, 100) == 1
    assert [r.id for r in await outbox.load("a", 0, 0, 10)] == [r.id for r in rows[3:]]


async def test_outbox_of_another_store_kind_is_refused() -> None:
    class Other:
        kind = "memory"

    with pytest.raises(StorageError):
        outbox_store(Other())  # type: ignore[arg-type]


def test_outbox_rows_skip_frames_without_an_mn() -> None:
    e = forwarded(MN1, 1)
    assert e.frame is not None
    e.frame = e.frame._replace(mn=None)
    assert outbox_rows([e]) == []
    assert len(frame_digest(b"x")) == 16


async def _rows(store: Store, upstream: str) -> list[tuple[Any, ...]]:
    """(id, outcome, attempts, confirmed, bytes dropped) of every row of ``upstream``."""
    if isinstance(store, SqliteStore):
        return await store.call(
            "rows",
            lambda db: [
                (i, o, a, c is not None, r is None)
                for i, o, a, c, r in db.execute(
                    "SELECT id, outcome, attempts, confirmed_at, raw FROM forward_outbox "
                    "WHERE upstream = ? ORDER BY id",
                    (upstream,),
                )
            ],
        )
    assert isinstance(store, PostgresStore)
    rows = await store.pool.fetch(
        "SELECT id, outcome, attempts, confirmed_at IS NOT NULL, raw IS NULL "
        "FROM hj212.forward_outbox WHERE upstream = $1 ORDER BY id",
        upstream,
    )
    return [tuple(r) for r in rows]
