"""SqliteStore: the same rows, keys and idempotency as PostgreSQL, on one file."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from storekit import RECEIVED, dump_pg, dump_sqlite, entry, frame, iso, realtime, scenario, us

from storage.base import Entry, PresenceRow, StorageError, Store
from storage.postgres import PostgresStore
from storage.sqlite import SqliteStore, iso_from_us, us_from_iso


@pytest.fixture
async def lite(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(str(tmp_path / "hj212.sqlite3"))
    await s.open()
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()


def _batches() -> list[list[Entry]]:
    """Fresh data, a resend, a change, a stale version, a backfill, repeats in one batch."""
    dt = "20240315103000"
    return [
        scenario(),
        scenario(),
        [entry(realtime("88888880000000000000A001", dt, {"w01018": "36.1"}), RECEIVED + 60)],
        [entry(realtime("88888880000000000000A001", dt, {"w01018": "30.0"}), RECEIVED + 30)],
        [entry(realtime("M9", "20240315100000", {"w01018": "1"}), RECEIVED)],
        [
            entry(realtime("M9", "20240315093000", {"w01018": "2"}), RECEIVED + 1),
            entry(realtime("M9", "20240315093000", {"w01018": "2"}), RECEIVED + 2),
            entry(realtime("M9", "20240315093000", {"w01018": "5"}), RECEIVED + 3),
        ],
        [Entry(frame(None, RECEIVED + 500, ok=False))],
    ]


async def _apply(store: Store) -> None:
    for batch in _batches():
        await store.write(batch)


async def test_same_rows_and_counters_as_postgresql(
    lite: SqliteStore, tmp_path: Path, pg_migrated_dsn: str
) -> None:
    pg = PostgresStore(pg_migrated_dsn)
    await pg.open()
    try:
        await _apply(pg)
        await _apply(lite)
        pg_stats = pg.stats()
    finally:
        await pg.close()
    expected = await dump_pg(pg_migrated_dsn)
    got = dump_sqlite(str(tmp_path / "hj212.sqlite3"))
    assert got == expected
    assert lite.stats() == pg_stats
    # and the values are the ones intended, not merely equal
    w01018 = [r for r in got["reading"] if r[3] == "w01018" and r[1].startswith("8888888000")]  # type: ignore[union-attr]
    assert [(r[5], r[19], r[20]) for r in w01018] == [(36.1, iso(RECEIVED + 60), 1)]
    m9 = [(r[0], r[5], r[20]) for r in got["reading"] if r[1] == "M9"]
    assert m9 == [
        (iso(us("2024-03-15 01:30:00")), 5.0, 1),
        (iso(us("2024-03-15 02:00:00")), 1.0, 0),
    ]
    assert len(got["frame"]) == 9 + 9 + 1 + 1 + 1 + 3 + 1


async def test_fresh_store_on_existing_file_falls_back(lite: SqliteStore, tmp_path: Path) -> None:
    await lite.write(scenario())
    other = SqliteStore(str(tmp_path / "hj212.sqlite3"))
    await other.open()
    try:
        assert await other.migrate() == []
        await other.write(scenario())
        stats = other.stats()
    finally:
        await other.close()
    assert (stats.fallbacks, stats.batches_upsert, stats.duplicates) == (1, 1, 11)
    d = dump_sqlite(str(tmp_path / "hj212.sqlite3"))
    assert (len(d["reading"]), len(d["info"]), len(d["device_status"]), len(d["frame"])) == (
        4,
        3,
        4,
        18,
    )


async def test_file_is_wal_and_times_are_iso_text(lite: SqliteStore, tmp_path: Path) -> None:
    await lite.write(scenario()[:1])
    conn = sqlite3.connect(str(tmp_path / "hj212.sqlite3"))
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT data_time, received_at FROM reading LIMIT 1").fetchone() == (
            "2024-03-15T02:30:00.000000Z",
            "2024-03-15T02:30:05.000000Z",
        )
        assert conn.execute("SELECT datetime(data_time) FROM reading LIMIT 1").fetchone() == (
            "2024-03-15 02:30:00",
        )
    finally:
        conn.close()


def test_time_text_round_trip() -> None:
    for t in (0, RECEIVED, RECEIVED + 123_456, us("2099-12-31 23:59:59.999999")):
        assert us_from_iso(iso_from_us(t)) == t


async def test_fetch_frames_and_maintain(lite: SqliteStore) -> None:
    now = us("2030-06-15 12:00:00")
    old = now - 40 * 86_400_000_000
    await lite.write(
        [
            entry(realtime("M1", "20300615200000", {"w01018": "1"}), now - 5),
            Entry(frame(None, now - 3, ok=False)),
            entry(realtime("M2", "20300615200000", {"w01018": "1"}), now - 9),
            entry(realtime("M1", "20300505200000", {"w01018": "1"}), old),
        ]
    )
    got = await lite.fetch_frames(mn=None, since_us=None, limit=10)
    assert [t for t, _ in got] == [old, now - 9, now - 5]
    assert got[-1][1] == b"##CN=2011;MN=M1;DataTime=20300615200000"
    assert [t for t, _ in await lite.fetch_frames(mn="M1", since_us=now - 9, limit=10)] == [now - 5]
    assert await lite.maintain(now_us=now) == ["deleted 1 frames older than 30 days"]
    assert [t for t, _ in await lite.fetch_frames(mn=None, since_us=None, limit=10)] == [
        now - 9,
        now - 5,
    ]


async def test_presence_counters_add_up(lite: SqliteStore, tmp_path: Path) -> None:
    t0 = us("2024-03-15 02:00:00")
    await lite.write_presence(
        [
            PresenceRow("M1", t0, t0 + 10, t0 - 50, "10.0.0.1:1", 0, "2017", 3, 1),
            PresenceRow("M1", t0 + 5, t0 + 20, None, "10.0.0.9:1", 1, "2017", 2, 0),
        ]
    )
    await lite.write_presence(
        [PresenceRow("M1", t0 + 30, t0 + 40, None, "10.0.0.3:1", 2, "2017", 4, 2)]
    )
    conn = sqlite3.connect(str(tmp_path / "hj212.sqlite3"))
    try:
        row = conn.execute("SELECT * FROM presence").fetchone()
    finally:
        conn.close()
    # The clock skew columns are written by the command dispatcher, not by presence.
    assert row == (
        "M1", iso(t0), iso(t0 + 40), iso(t0 - 50), "10.0.0.3:1", 2, "2017", 9, 3, None, None
    )  # fmt: skip


async def test_refused_value_is_not_retriable(lite: SqliteStore) -> None:
    bad = Entry(frame(None, RECEIVED, ok=False)._replace(worker=2**70))  # no 64-bit integer
    with pytest.raises(StorageError) as info:
        await lite.write([bad])
    assert info.value.retriable is False
    assert info.value.kind == "data"
    assert await lite.ping()
    await lite.write(scenario())  # the store goes on


async def test_closed_store_refuses_politely(tmp_path: Path) -> None:
    s = SqliteStore(str(tmp_path / "x.sqlite3"))
    assert not await s.ping()
    with pytest.raises(StorageError):
        await s.write(scenario())


VECTORS = Path(__file__).resolve().parents[1] / "data" / "vectors" / "protocol-examples.jsonl"


def _vector_entries() -> list[Entry]:
    """Every golden vector that decodes, through the real decoder and code tables."""
    import json

    from storekit import SHANGHAI_US

    from protocol import decode_segment
    from protocol.codes import get_profile
    from protocol.errors import ProtocolError
    from storage.rows import entry_for_packet

    entries = []
    for i, line in enumerate(VECTORS.read_text(encoding="utf-8").splitlines()):
        wire = json.loads(line)["wire"]
        try:
            p = decode_segment(wire[6 : wire.rfind("&&") + 2].encode(), raw=wire.encode())
        except ProtocolError:
            continue
        f = frame(p, RECEIVED + i)
        entries.append(
            entry_for_packet(p, f, utc_offset_us=SHANGHAI_US, profile=get_profile(p.version))
        )
    return entries


async def test_golden_vectors_store_the_same_rows_in_both_stores(
    lite: SqliteStore, tmp_path: Path, pg_migrated_dsn: str
) -> None:
    entries = _vector_entries()
    assert len(entries) >= 20
    pg = PostgresStore(pg_migrated_dsn)
    await pg.open()
    try:
        await pg.write(entries)
        await pg.write(entries)  # a resend changes nothing
    finally:
        await pg.close()
    await lite.write(entries)
    await lite.write(entries)
    got = dump_sqlite(str(tmp_path / "hj212.sqlite3"))
    assert got == await dump_pg(pg_migrated_dsn)
    keys = {
        "reading": {r[:4] for e in entries for r in e.readings},
        "info": {r[:5] for e in entries for r in e.infos},
        "device_status": {r[:5] for e in entries for r in e.statuses},
    }
    for table, distinct in keys.items():
        assert len(got[table]) == len(distinct) > 0
    assert len(got["frame"]) == 2 * len(entries)
