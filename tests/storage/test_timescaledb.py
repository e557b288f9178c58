"""The TimescaleDB layout on a server that has TimescaleDB installed and preloaded.

Hypertables and their chunk intervals, compression segmented by ``mn``, the policies
following the settings, ``maintain`` doing the policies' work in the foreground,
idempotency (resend, revision) on compressed chunks, the reader role's grants on
hypertables and their chunks; and, in throwaway clusters of the same installation, a
server that offers the extension without preloading it (plain layout, one warning) or
stops preloading it after the schema was made (refused, nothing written astray).

Run with ``HJ212_TEST_DSN`` pointing at such a server. Everywhere else, CI included,
these tests skip: TimescaleDB is not installable from the package registries of the
development and CI machines. The detection logic itself is tested without TimescaleDB
in test_timescaledb_detection.py.

Dates are in 2030, with ``maintain(now_us=...)`` there: the background policy jobs,
which go by the server's clock, never touch those chunks while a test runs.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from storekit import entry, frame, pg_fetch, realtime, timescaledb_usable, us

from storage.base import Entry, StorageError
from storage.postgres import DAY_US, PostgresStore

SKIP_REASON = (
    "TimescaleDB is not installed and preloaded on this PostgreSQL server "
    "(it is not installable from the package registries here)"
)
SKIP_REASON_LOCAL = (
    "TimescaleDB is not installed in this machine's PostgreSQL "
    "(it is not installable from the package registries here)"
)

NOW = us("2030-06-15 12:00:00")
MN = "MN-TSDB-1"


@pytest.fixture
async def ts_dsn(pg_clean_dsn: str) -> str:
    if not await timescaledb_usable(pg_clean_dsn):
        pytest.skip(SKIP_REASON)
    return pg_clean_dsn


@pytest.fixture
async def store(ts_dsn: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(ts_dsn, reading_retention_days=40)
    await s.open()
    try:
        await s.migrate()
        yield s
    finally:
        await s.close()


def _reading(data_time: str, received_us: int, value: str = "35.6") -> Entry:
    """A 2011 packet; ``data_time`` is Shanghai wall-clock text (UTC+8)."""
    return entry(realtime(MN, data_time, {"w01018": value, "w21003": "1.0"}), received_us)


async def _chunks(dsn: str, table: str) -> list[tuple[object, ...]]:
    """(range_start, is_compressed) of ``table``'s chunks, oldest first."""
    return await pg_fetch(
        dsn,
        "SELECT range_start, is_compressed FROM timescaledb_information.chunks "
        "WHERE hypertable_schema = 'hj212' AND hypertable_name = $1 ORDER BY range_start",
        table,
    )


# -- migrate -------------------------------------------------------------------------------


async def test_migrate_creates_the_extension_and_the_hypertables(ts_dsn: str) -> None:
    await pg_fetch(ts_dsn, "DROP EXTENSION IF EXISTS timescaledb CASCADE")
    s = PostgresStore(ts_dsn)
    await s.open()
    try:
        first = await s.migrate()
        second = await s.migrate()
    finally:
        await s.close()
    ((version,),) = await pg_fetch(
        ts_dsn, "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
    )
    assert first[0] == f"created extension timescaledb {version}"
    assert second == []
    assert s._layout == "timescaledb"
    dims = await pg_fetch(
        ts_dsn,
        "SELECT hypertable_name, column_name, time_interval "
        "FROM timescaledb_information.dimensions WHERE hypertable_schema = 'hj212' ORDER BY 1",
    )
    day, week = DAY_US // 1_000_000, 7 * DAY_US // 1_000_000
    assert [(t, c, int(i.total_seconds())) for t, c, i in dims] == [  # type: ignore[attr-defined]
        ("device_status", "data_time", week),
        ("frame", "received_at", day),
        ("info", "data_time", week),
        ("reading", "data_time", day),
    ]
    segments = await pg_fetch(
        ts_dsn,
        "SELECT hypertable_name, attname FROM timescaledb_information.compression_settings "
        "WHERE hypertable_schema = 'hj212' AND segmentby_column_index IS NOT NULL ORDER BY 1",
    )
    assert segments == [("device_status", "mn"), ("frame", "mn"), ("info", "mn"), ("reading", "mn")]
    jobs = await pg_fetch(
        ts_dsn,
        "SELECT hypertable_name, proc_name, "
        "coalesce(config ->> 'compress_after', config ->> 'drop_after') "
        "FROM timescaledb_information.jobs WHERE hypertable_schema = 'hj212' ORDER BY 1, 2",
    )
    assert jobs == [
        ("device_status", "policy_compression", "14 days"),
        ("frame", "policy_compression", "14 days"),
        ("frame", "policy_retention", "30 days"),
        ("info", "policy_compression", "14 days"),
        ("reading", "policy_compression", "14 days"),
    ]


async def test_an_extension_already_in_the_database_is_used(ts_dsn: str) -> None:
    await pg_fetch(ts_dsn, "CREATE EXTENSION IF NOT EXISTS timescaledb")
    s = PostgresStore(ts_dsn)
    await s.open()
    try:
        done = await s.migrate()
        await s.write([_reading("20300615100000", NOW)])
    finally:
        await s.close()
    assert not any("extension" in line for line in done)
    assert s._layout == "timescaledb"
    assert [c for _, c in await _chunks(ts_dsn, "reading")] == [False]


async def test_policies_follow_the_settings(store: PostgresStore, ts_dsn: str) -> None:
    async def migrate(**settings: Any) -> list[str]:
        s = PostgresStore(ts_dsn, **settings)
        await s.open()
        try:
            return await s.migrate()
        finally:
            await s.close()

    changed = await migrate(
        compress_after_days=7, frame_retention_days=10, reading_retention_days=0
    )
    assert "compression policy on hj212.reading: compress_after 7 days" in changed
    assert "retention policy on hj212.frame: drop_after 10 days" in changed
    assert "removed retention policy on hj212.reading" in changed
    assert await migrate(compress_after_days=7, frame_retention_days=10) == []
    rows = await pg_fetch(
        ts_dsn,
        "SELECT hypertable_name, proc_name, "
        "coalesce(config ->> 'compress_after', config ->> 'drop_after') "
        "FROM timescaledb_information.jobs WHERE hypertable_schema = 'hj212' "
        "AND hypertable_name IN ('frame', 'reading') ORDER BY 1, 2",
    )
    assert rows == [
        ("frame", "policy_compression", "7 days"),
        ("frame", "policy_retention", "10 days"),
        ("reading", "policy_compression", "7 days"),
    ]


# -- maintain --------------------------------------------------------------------------------


async def test_maintain_drops_then_compresses_old_chunks(store: PostgresStore, ts_dsn: str) -> None:
    old, mid = NOW - 45 * DAY_US, NOW - 20 * DAY_US
    await store.write(
        [
            _reading("20300501100000", old),  # 45 days: past both retentions
            _reading("20300526100000", mid),  # 20 days: compressed, kept
            _reading("20300615100000", NOW),  # today: left alone
        ]
    )
    done = await store.maintain(now_us=NOW)
    assert done == [
        "dropped 1 chunks of hj212.frame older than 30 days",
        "dropped 1 chunks of hj212.reading older than 40 days",
        "compressed 1 chunks of hj212.reading older than 14 days",
        "compressed 1 chunks of hj212.frame older than 14 days",
    ]
    assert [c for _, c in await _chunks(ts_dsn, "reading")] == [True, False]
    assert [c for _, c in await _chunks(ts_dsn, "frame")] == [True, False]
    assert await store.maintain(now_us=NOW) == []  # nothing left to do
    assert await pg_fetch(ts_dsn, "SELECT count(*) FROM hj212.reading") == [(4,)]
    assert await pg_fetch(ts_dsn, "SELECT count(*) FROM hj212.frame") == [(2,)]


# -- idempotency on compressed chunks ------------------------------------------------------


async def test_resend_and_revision_on_a_compressed_chunk(store: PostgresStore, ts_dsn: str) -> None:
    # Backfill: data from May arriving in June, its chunk compressed meanwhile.
    received = NOW - 5 * DAY_US
    await store.write([_reading("20300520100000", received)])
    assert await store.maintain(now_us=NOW) == [
        "compressed 1 chunks of hj212.reading older than 14 days"
    ]
    assert [c for _, c in await _chunks(ts_dsn, "reading")] == [True]

    other = PostgresStore(ts_dsn)  # a fresh process: its watermark knows nothing
    await other.open()
    try:
        await other.write([_reading("20300520100000", received + 1)])
        stats = other.stats()
        assert stats.fallbacks == 1  # the COPY met the compressed rows' unique key
        assert (stats.duplicates, stats.rows_revised) == (2, 0)
        await other.write([_reading("20300520100000", received + 2, value="36.6")])
        assert other.stats().rows_revised == 1
    finally:
        await other.close()
    await store.write([_reading("20300520100000", received + 3, value="36.6")])  # resend
    assert store.stats().duplicates == 2

    expected = [("w01018", 36.6, 1), ("w21003", 1.0, 0)]
    sql = "SELECT code, rtd, revision FROM hj212.reading ORDER BY code"
    assert await pg_fetch(ts_dsn, sql) == expected
    # The revision decompressed part of the chunk; maintain compresses it again.
    assert await store.maintain(now_us=NOW) == [
        "compressed 1 chunks of hj212.reading older than 14 days"
    ]
    assert await store.maintain(now_us=NOW) == []
    assert await pg_fetch(ts_dsn, sql) == expected
    assert await pg_fetch(ts_dsn, "SELECT count(*) FROM hj212.frame") == [(4,)]


# -- access ------------------------------------------------------------------------------------


async def test_reader_grants_hold_on_hypertables_and_their_chunks(
    store: PostgresStore, ts_dsn: str
) -> None:
    mid = NOW - 20 * DAY_US
    await store.write([_reading("20300526100000", mid), Entry(frame(None, mid + 1, ok=False))])
    await store.write([_reading("20300615100000", NOW)])
    await store.maintain(now_us=NOW)
    assert [c for _, c in await _chunks(ts_dsn, "frame")] == [True, False]
    chunk_tables = [
        str(name)
        for (name,) in await pg_fetch(
            ts_dsn,
            "SELECT format('%I.%I', c.schema_name, c.table_name) "
            "FROM _timescaledb_catalog.chunk c "
            "JOIN _timescaledb_catalog.hypertable h ON h.id = c.hypertable_id "
            "WHERE h.schema_name = 'hj212' AND h.table_name = 'frame' "
            "UNION ALL "
            "SELECT format('%I.%I', z.schema_name, z.table_name) "
            "FROM _timescaledb_catalog.chunk c "
            "JOIN _timescaledb_catalog.hypertable h ON h.id = c.hypertable_id "
            "JOIN _timescaledb_catalog.chunk z ON z.id = c.compressed_chunk_id "
            "WHERE h.schema_name = 'hj212' AND h.table_name = 'frame'",
        )
    ]
    assert len(chunk_tables) == 3  # two chunks, one of them compressed
    conn = await asyncpg.connect(ts_dsn)
    try:
        await conn.execute("SET ROLE hj212_reader")
        assert await conn.fetchval("SELECT count(*) FROM hj212.reading") == 4
        assert await conn.fetchval("SELECT count(*) FROM hj212.frame_public") == 3
        assert (
            await conn.fetchval("SELECT count(*) FROM hj212.frame_public WHERE raw_bytes > 0") == 3
        )
        for sql in (
            "SELECT raw FROM hj212.frame",
            *(f"SELECT * FROM {t}" for t in chunk_tables),
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch(sql)
    finally:
        await conn.close()


# -- a server that offers the extension without preloading it ---------------------------------


def _restart(cluster: Any, *settings: str) -> None:
    """Restart a throwaway cluster with extra ``-c`` settings."""
    if cluster.running:
        cluster._pg_ctl("-m", "fast", "stop")
        cluster.running = False
    opts = " ".join(
        [
            f"-p {cluster.port} -c listen_addresses=127.0.0.1 -k {cluster.directory}",
            "-c fsync=off",
            *(f"-c {s}" for s in settings),
        ]
    )
    cluster._pg_ctl("-o", opts, "start")
    cluster.running = True


PRELOAD = ("shared_preload_libraries=timescaledb", "timescaledb.telemetry_level=off")


@pytest.fixture
async def offering_cluster(throwaway_cluster: Any) -> Any:
    """A throwaway cluster of this machine's PostgreSQL, which does not preload anything:
    it offers TimescaleDB only where TimescaleDB is installed here."""
    offered = await pg_fetch(
        throwaway_cluster.dsn,
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'",
    )
    if not offered:
        pytest.skip(SKIP_REASON_LOCAL)
    return throwaway_cluster


@pytest.mark.slow
async def test_offered_without_preloading_runs_plain_with_one_warning(
    offering_cluster: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="storage.postgres")
    s = PostgresStore(offering_cluster.dsn)
    await s.open()
    try:
        first = await s.migrate()
        assert await s.migrate() == []
        await s.write([_reading("20300615100000", NOW)])
    finally:
        await s.close()
    assert not any("extension" in line for line in first)
    assert s._layout == "partitioned"
    warnings = [r.getMessage() for r in caplog.records if r.name == "storage.postgres"]
    assert len(warnings) == 1
    assert "is available but not used" in warnings[0]
    assert "shared_preload_libraries" in warnings[0]
    assert await pg_fetch(offering_cluster.dsn, "SELECT count(*) FROM hj212.reading") == [(2,)]


@pytest.mark.slow
async def test_no_longer_preloaded_is_refused_and_nothing_lands_astray(
    offering_cluster: Any,
) -> None:
    cluster = offering_cluster
    _restart(cluster, *PRELOAD)
    s = PostgresStore(cluster.dsn)
    await s.open()
    try:
        assert (await s.migrate())[0].startswith("created extension timescaledb")
        await s.write([_reading("20300615100000", NOW)])
    finally:
        await s.close()

    _restart(cluster)  # the library is no longer preloaded
    with pytest.raises(StorageError) as info:
        await PostgresStore(cluster.dsn).open()
    assert info.value.retriable
    assert "shared_preload_libraries" in str(info.value)
    assert await pg_fetch(cluster.dsn, "SELECT count(*) FROM ONLY hj212.reading") == [(0,)]

    _restart(cluster, *PRELOAD)
    s = PostgresStore(cluster.dsn)
    await s.open()
    try:
        assert await s.migrate() == []
        await s.write([_reading("20300615110000", NOW + 1)])
        assert s._layout == "timescaledb"
    finally:
        await s.close()
    assert await pg_fetch(cluster.dsn, "SELECT count(*) FROM hj212.reading") == [(4,)]
    assert await pg_fetch(cluster.dsn, "SELECT count(*) FROM ONLY hj212.reading") == [(0,)]
