"""PostgresStore against a real PostgreSQL: schema, routing, idempotency, access, partitions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from storekit import (
    MN_2017,
    RECEIVED,
    dump_pg,
    entry,
    frame,
    iso,
    packet,
    pg_fetch,
    realtime,
    scenario,
    timescaledb_usable,
    us,
)

from storage.base import Entry, PresenceRow, StorageError
from storage.migrate import load_migrations
from storage.postgres import DAY_US, PostgresStore

MIGRATIONS = ["001_core.sql", "002_frame.sql", "003_access.sql", "004_timescaledb.sql"]


@pytest.fixture
async def store(pg_migrated_dsn: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(pg_migrated_dsn, pool_min=1, pool_max=2)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def _count(dsn: str, table: str) -> int:
    (row,) = await pg_fetch(dsn, f"SELECT count(*) FROM hj212.{table}")
    return int(row[0])  # type: ignore[call-overload]


# -- migrations ----------------------------------------------------------------------


async def test_migrate_applies_each_file_once(pg_clean_dsn: str) -> None:
    s = PostgresStore(pg_clean_dsn)
    await s.open()
    try:
        first = await s.migrate()
        second = await s.migrate()
    finally:
        await s.close()
    files = [m.filename for m in load_migrations()]  # later features add files 010+
    assert files[:4] == MIGRATIONS
    assert [line for line in first if line.endswith(".sql")] == files
    rest = [line for line in first if not line.endswith(".sql")]
    if s._layout == "timescaledb":  # a server with TimescaleDB: policies, no partitions
        assert any(line.startswith("retention policy on hj212.frame") for line in rest)
        assert all(" policy on hj212." in line for line in rest if "extension" not in line)
    else:
        assert first[: len(files)] == files
        assert len(rest) == 4  # today and 3 days ahead
        assert all(line.startswith("created partition hj212.frame_p") for line in rest)
    assert second == []
    versions = await pg_fetch(pg_clean_dsn, "SELECT version FROM hj212.schema_migrations")
    assert sorted(v for (v,) in versions) == [m.version for m in load_migrations()]  # type: ignore[type-var]


async def test_workers_migrating_at_once_apply_each_file_once(pg_clean_dsn: str) -> None:
    stores = [PostgresStore(pg_clean_dsn) for _ in range(3)]
    for s in stores:
        await s.open()
    try:
        results = await asyncio.gather(*(s.migrate() for s in stores))
    finally:
        for s in stores:
            await s.close()
    applied = [name for r in results for name in r if name.endswith(".sql")]
    assert sorted(applied) == [m.filename for m in load_migrations()]


async def test_tables_and_columns(store: PostgresStore, pg_migrated_dsn: str) -> None:
    rows = await pg_fetch(
        pg_migrated_dsn,
        "SELECT table_name, string_agg(column_name, ',' ORDER BY ordinal_position) "
        "FROM information_schema.columns WHERE table_schema = 'hj212' "
        "GROUP BY table_name ORDER BY table_name",
    )
    tables = dict(rows)
    assert tables["reading"] == (
        "data_time,mn,cn,code,code_2017,rtd,avg,min,max,cou,zs_rtd,zs_avg,zs_min,zs_max,"
        "flag,eflag,sample_time,extra,raw,received_at,revision"
    )
    assert tables["frame"] == "received_at,id,peer,worker,mn,st,cn,qn,ok,reason,quirks,raw"
    assert "raw" not in str(tables["frame_public"]).split(",")
    assert tables["presence"] == (
        "mn,first_seen,last_seen,last_data_time,peer,worker,version,frames,rejects,"
        "clock_skew_s,clock_skew_at"
    )
    keys = await pg_fetch(
        pg_migrated_dsn,
        "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE contype = 'p' AND connamespace = 'hj212'::regnamespace "
        "AND conrelid::regclass::text = ANY($1::text[]) ORDER BY 1",
        [
            f"hj212.{t}"
            for t in (
                "device",
                "device_status",
                "frame",
                "info",
                "presence",
                "reading",
                "schema_migrations",
            )
        ],
    )
    assert dict(keys) == {
        "hj212.device": "PRIMARY KEY (mn)",
        "hj212.device_status": "PRIMARY KEY (mn, cn, data_time, device, field)",
        "hj212.frame": "PRIMARY KEY (received_at, id)",
        "hj212.info": "PRIMARY KEY (mn, cn, data_time, pol_id, info_code)",
        "hj212.presence": "PRIMARY KEY (mn)",
        "hj212.reading": "PRIMARY KEY (mn, cn, data_time, code)",
        "hj212.schema_migrations": "PRIMARY KEY (version)",
    }


# -- routing and values --------------------------------------------------------------


async def test_scenario_rows_land_in_their_tables(
    store: PostgresStore, pg_migrated_dsn: str
) -> None:
    await store.write(scenario())
    d = await dump_pg(pg_migrated_dsn)
    t = iso(us("2024-03-15 02:30:00"))
    assert d["reading"] == [
        (
            t, MN_2017, 2011, "w01018", "w01018", 35.6, None, None, None, None, None, None,
            None, None, "N", "A01", iso(us("2024-03-15 02:00:00")), None,
            "SampleTime=20240315100000,Rtd=035.60,Flag=N,EFlag=A01", iso(RECEIVED), 0,
        ),
        (
            t, MN_2017, 2011, "w21003", "w21003", 1.204, None, None, None, None, None, None,
            None, None, "N", None, None, None, "Rtd=1.204,Flag=N", iso(RECEIVED), 0,
        ),
        (
            iso(us("2024-03-15 02:20:00")), MN_2017, 2051, "a21026", "a21026",
            None, 12.3, 10.1, 15.0, 1.2, None, 14.0, None, None, "N", None, None, {"Xyz": "abc"},
            "Min=10.1,Avg=12.3,Max=15.0,ZsAvg=14.0,Cou=1.2,Flag=N,Xyz=abc", iso(RECEIVED + 1), 0,
        ),
        (
            iso(us("2024-03-15 02:30:00")), "88888880000001", 2011, "011", "w01018",
            231.0, None, None, None, None, None, None, None, None, "N", None, None, None,
            "Rtd=231.0,Flag=N", iso(RECEIVED + 6), 0,
        ),
    ]  # fmt: skip
    assert d["info"] == [
        (t, MN_2017, 3020, "w01018", "i11001", "log text", None, iso(RECEIVED + 2), 0),
        (t, MN_2017, 3020, "w01018", "i12001", "1", 1.0, iso(RECEIVED + 2), 0),
        (t, MN_2017, 3020, "w01018", "i13004", "168.0", 168.0, iso(RECEIVED + 2), 0),
    ]
    assert d["device_status"] == [
        (t, MN_2017, 2021, "SB1", "RS", "1", 1.0, iso(RECEIVED + 3), 0),
        (t, MN_2017, 2021, "SB2", "RS", "0", 0.0, iso(RECEIVED + 3), 0),
        (iso(us("2024-03-14 16:00:00")), MN_2017, 2041, "SB1", "RT", "23.50", 23.5,
         iso(RECEIVED + 4), 0),
        (iso(us("2024-03-15 00:01:05")), MN_2017, 2081, "", "RestartTime", "20240315075942",
         None, iso(RECEIVED + 5), 0),
    ]  # fmt: skip
    assert [(r[3], r[5], r[7], r[8]) for r in d["frame"]] == [
        (MN_2017, "2011", True, None),
        (MN_2017, "2051", True, None),
        (MN_2017, "3020", True, None),
        (MN_2017, "2021", True, None),
        (MN_2017, "2041", True, None),
        (MN_2017, "2081", True, None),
        ("88888880000001", "2011", True, None),
        (MN_2017, "20X1", True, None),
        (None, None, False, "crc_mismatch"),
    ]
    assert d["frame"][0][9] == b"##CN=2011;MN=88888880000000000000A001;DataTime=20240315103000"
    stats = store.stats()
    assert stats.rows_written == {"frame": 9, "reading": 4, "info": 3, "device_status": 4}
    assert (stats.batches_copy, stats.batches_upsert, stats.duplicates) == (1, 0, 0)


# -- idempotency ---------------------------------------------------------------------


async def test_resent_batch_adds_no_rows(store: PostgresStore, pg_migrated_dsn: str) -> None:
    await store.write(scenario())
    before = await dump_pg(pg_migrated_dsn)
    await store.write(scenario())
    after = await dump_pg(pg_migrated_dsn)
    for table in ("reading", "info", "device_status"):
        assert after[table] == before[table]
    assert len(after["frame"]) == 18  # the archive keeps every frame
    stats = store.stats()
    assert stats.batches_copy == 1
    assert stats.batches_upsert == 1
    assert stats.duplicates == 11
    assert stats.rows_revised == 0
    assert stats.rows_written == {"frame": 18, "reading": 4, "info": 3, "device_status": 4}


async def test_changed_value_bumps_revision_and_newest_wins(
    store: PostgresStore, pg_migrated_dsn: str
) -> None:
    dt = "20240315103000"
    await store.write([entry(realtime("MN-R", dt, {"w01018": "35.6", "w21003": "1.0"}), RECEIVED)])
    await store.write([entry(realtime("MN-R", dt, {"w01018": "36.0"}), RECEIVED + 60_000_000)])
    # An older version arriving late (received earlier) does not replace the newer one.
    await store.write([entry(realtime("MN-R", dt, {"w01018": "35.9"}), RECEIVED + 30_000_000)])
    await store.write([entry(realtime("MN-R", dt, {"w01018": "37.0"}), RECEIVED + 90_000_000)])
    rows = await pg_fetch(
        pg_migrated_dsn,
        "SELECT code, rtd, raw, received_at, revision FROM hj212.reading ORDER BY code",
    )
    assert [(r[0], r[1], r[2], r[4]) for r in rows] == [
        ("w01018", 37.0, "Rtd=37.0,Flag=N", 2),
        ("w21003", 1.0, "Rtd=1.0,Flag=N", 0),
    ]
    stats = store.stats()
    assert (stats.rows_revised, stats.duplicates) == (2, 1)
    assert (stats.batches_copy, stats.batches_upsert) == (1, 3)


async def test_versions_within_one_batch_collapse_to_the_newest(
    store: PostgresStore, pg_migrated_dsn: str
) -> None:
    dt = "20240315103000"
    batch = [
        entry(realtime("MN-B", dt, {"w01018": "1.0"}), RECEIVED),
        entry(realtime("MN-B", dt, {"w01018": "1.0"}), RECEIVED + 1),
        entry(realtime("MN-B", dt, {"w01018": "2.0"}), RECEIVED + 2),
    ]
    await store.write(batch)
    rows = await pg_fetch(pg_migrated_dsn, "SELECT rtd, revision FROM hj212.reading")
    assert rows == [(2.0, 1)]
    stats = store.stats()
    assert (stats.batches_upsert, stats.duplicates, stats.rows_revised) == (1, 1, 1)
    assert stats.rows_written["reading"] == 2  # inserted, then revised


async def test_resend_and_change_in_one_batch_count_one_revision(
    store: PostgresStore, pg_migrated_dsn: str
) -> None:
    dt = "20240315103000"
    await store.write([entry(realtime("MN-B", dt, {"w01018": "1.0"}), RECEIVED)])
    await store.write(
        [
            entry(realtime("MN-B", dt, {"w01018": "1.0"}), RECEIVED + 1),
            entry(realtime("MN-B", dt, {"w01018": "3.0"}), RECEIVED + 2),
        ]
    )
    rows = await pg_fetch(pg_migrated_dsn, "SELECT rtd, revision FROM hj212.reading")
    assert rows == [(3.0, 1)]
    assert (store.stats().duplicates, store.stats().rows_revised) == (1, 1)


async def test_plain_copy_only_for_batches_that_cannot_hold_duplicates(
    store: PostgresStore,
) -> None:
    def rt(mn: str, dt: str, received: int) -> Entry:
        return entry(realtime(mn, dt, {"w01018": "1", "w21003": "2"}), received)

    await store.write([rt("A", "20240315103000", RECEIVED), rt("B", "20240315103000", RECEIVED)])
    await store.write([rt("A", "20240315103030", RECEIVED + 30)])  # newer: plain
    assert (store.stats().batches_copy, store.stats().batches_upsert) == (2, 0)
    # A slot (mn, cn, DataTime) in two entries of one batch (split parts of one record, a
    # quick resend) is not judged: upsert path, whatever the codes.
    part1 = entry(packet("2061", "20240315090000", {"w01018": {"Avg": "1"}}, mn="A"), RECEIVED)
    part2 = entry(packet("2061", "20240315090000", {"w21003": {"Avg": "2"}}, mn="A"), RECEIVED)
    await store.write([part1, part2])
    assert (store.stats().batches_copy, store.stats().batches_upsert) == (2, 1)
    # A backfilled (older) record takes the upsert path even though it is new.
    await store.write([rt("A", "20240315102930", RECEIVED + 60)])
    assert (store.stats().batches_copy, store.stats().batches_upsert) == (2, 2)
    # The same key twice in one batch: upsert path.
    await store.write([rt("C", "20240315103000", RECEIVED), rt("C", "20240315103000", RECEIVED)])
    assert (store.stats().batches_copy, store.stats().batches_upsert) == (2, 3)
    # Frames only (a rejected frame, a heartbeat): plain.
    await store.write([Entry(frame(None, RECEIVED, ok=False))])
    stats = store.stats()
    assert (stats.batches_copy, stats.batches_upsert, stats.fallbacks) == (3, 3, 0)
    assert stats.rows_written["reading"] == 2 + 2 + 2 + 2 + 2 + 2


async def test_duplicate_codes_within_one_entry_fall_back(store: PostgresStore) -> None:
    # Two records with the same DataTime in one packet (a non-standard device) repeat a
    # code inside one entry: the plain COPY meets the key and the batch is redone.
    e = entry(realtime("D", "20240315103000", {"w01018": "1"}), RECEIVED)
    doubled = Entry(e.frame, [*e.readings, e.readings[0]._replace(rtd=2.0)])
    await store.write([doubled])
    stats = store.stats()
    assert (stats.fallbacks, stats.batches_copy, stats.batches_upsert) == (1, 0, 1)
    assert (stats.rows_revised, stats.rows_written["reading"]) == (1, 2)


async def test_unique_violation_on_plain_path_falls_back_to_upsert(
    store: PostgresStore, pg_migrated_dsn: str
) -> None:
    await store.write(scenario())
    # A new process (another worker, a restart) has an empty watermark.
    other = PostgresStore(pg_migrated_dsn)
    await other.open()
    try:
        await other.write(scenario())
        stats = other.stats()
        changed = entry(realtime(MN_2017, "20240315103000", {"w01018": "40.0"}), RECEIVED + 10**6)
        await other.write([changed])
        revised = other.stats().rows_revised
    finally:
        await other.close()
    assert stats.fallbacks == 1
    assert (stats.batches_copy, stats.batches_upsert) == (0, 1)
    assert stats.duplicates == 11
    assert stats.rows_revised == 0
    assert revised == 1
    assert await _count(pg_migrated_dsn, "reading") == 4
    assert await _count(pg_migrated_dsn, "frame") == 19
    rows = await pg_fetch(
        pg_migrated_dsn, "SELECT rtd, revision FROM hj212.reading WHERE code = 'w01018'"
    )
    assert rows == [(40.0, 1)]


# -- access ----------------------------------------------------------------------------


async def test_reader_role_cannot_read_raw_frames_or_passwords(
    store: PostgresStore, pg_migrated_dsn: str
) -> None:
    await store.write(scenario())
    conn = await asyncpg.connect(pg_migrated_dsn)
    try:
        await conn.execute(
            "INSERT INTO hj212.device (mn, unit_name, password) VALUES ('M1', 'Plant', 'secret')"
        )
        await conn.execute("SET ROLE hj212_reader")
        assert await conn.fetchval("SELECT count(*) FROM hj212.frame_public") == 9
        assert await conn.fetchval("SELECT count(*) FROM hj212.reading") == 4
        assert await conn.fetchval("SELECT unit_name FROM hj212.device") == "Plant"
        for sql in (
            "SELECT raw FROM hj212.frame",
            "SELECT count(*) FROM hj212.frame",
            "SELECT password FROM hj212.device",
            "SELECT * FROM hj212.device",
            "INSERT INTO hj212.presence (mn, first_seen, last_seen, peer, worker, version) "
            "VALUES ('x', now(), now(), 'p', 0, '2017')",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch(sql)
        cols = await conn.fetch(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'hj212' AND table_name = 'frame_public'"
        )
        assert "raw" not in {c[0] for c in cols}
    finally:
        await conn.close()


# -- partitions ------------------------------------------------------------------------


async def _partitions(dsn: str) -> list[str]:
    rows = await pg_fetch(
        dsn,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'hj212.frame'::regclass ORDER BY 1",
    )
    return [str(r[0]) for r in rows]


async def test_frame_partitions_on_demand_and_dropped_by_maintain(
    store: PostgresStore, pg_migrated_dsn: str
) -> None:
    now = us("2030-06-15 12:00:00")
    old = us("2030-05-01 08:00:00")  # 45 days before: past the 30-day retention
    await store.write([Entry(frame(None, old, ok=False)), Entry(frame(None, now, ok=False))])
    if store._layout == "timescaledb":  # chunks instead of partitions: the same retention
        assert "dropped 1 chunks of hj212.frame older than 30 days" in await store.maintain(
            now_us=now
        )
        assert await _count(pg_migrated_dsn, "frame") == 1
        assert await store.maintain(now_us=now) == []
        return
    names = await _partitions(pg_migrated_dsn)
    assert "frame_p20300501" in names
    assert "frame_p20300615" in names
    done = await store.maintain(now_us=now)
    names = await _partitions(pg_migrated_dsn)
    assert "dropped partition hj212.frame_p20300501" in done
    assert "frame_p20300501" not in names
    assert {"frame_p20300615", "frame_p20300616", "frame_p20300617", "frame_p20300618"} <= set(
        names
    )
    assert all(n >= "frame_p20300516" for n in names)  # nothing older than retention stays
    assert await _count(pg_migrated_dsn, "frame") == 1
    assert await store.maintain(now_us=now) == []  # nothing left to do


async def test_new_store_instance_finds_existing_partitions(
    store: PostgresStore, pg_migrated_dsn: str
) -> None:
    t = us("2031-01-01 00:00:00")
    await store.write([Entry(frame(None, t, ok=False))])
    other = PostgresStore(pg_migrated_dsn)
    await other.open()
    try:
        await other.write([Entry(frame(None, t + 1, ok=False))])
    finally:
        await other.close()
    assert await _count(pg_migrated_dsn, "frame") == 2


# -- presence, replay, errors -----------------------------------------------------------


async def test_presence_counters_add_up(store: PostgresStore, pg_migrated_dsn: str) -> None:
    t0 = us("2024-03-15 02:00:00")
    await store.write_presence(
        [
            PresenceRow("M1", t0, t0 + 10, t0 - 50, "10.0.0.1:1", 0, "2017", 3, 1),
            PresenceRow("M2", t0, t0, None, "10.0.0.2:1", 0, "2005", 1, 0),
            PresenceRow("M1", t0 + 5, t0 + 20, t0 - 60, "10.0.0.9:1", 1, "2017", 2, 0),
        ]
    )
    await store.write_presence(
        [PresenceRow("M1", t0 + 30, t0 + 40, None, "10.0.0.3:1", 2, "2017", 4, 2)]
    )
    rows = await pg_fetch(
        pg_migrated_dsn,
        "SELECT mn, first_seen = $1, last_seen = $2, last_data_time = $3, peer, worker, "
        "frames, rejects FROM hj212.presence ORDER BY mn",
        *[
            __import__("datetime").datetime.fromtimestamp(x / 1e6, __import__("datetime").UTC)
            for x in (t0, t0 + 40, t0 - 50)
        ],
    )
    assert rows[0] == ("M1", True, True, True, "10.0.0.3:1", 2, 9, 3)
    assert rows[1][0] == "M2"
    assert rows[1][5:] == (0, 1, 0)


async def test_fetch_frames_in_receive_order(store: PostgresStore) -> None:
    def e(mn: str, t: int) -> Entry:
        return entry(realtime(mn, "20240315103000", {"w01018": "1"}), t)

    await store.write([e("M2", RECEIVED + 20), e("M1", RECEIVED + 10)])
    await store.write([e("M1", RECEIVED + 5), Entry(frame(None, RECEIVED + 7, ok=False))])
    got = await store.fetch_frames(mn=None, since_us=None, limit=10)
    assert [t for t, _ in got] == [RECEIVED + 5, RECEIVED + 10, RECEIVED + 20]
    assert got[0][1] == b"##CN=2011;MN=M1;DataTime=20240315103000"
    assert [t for t, _ in await store.fetch_frames(mn="M1", since_us=None, limit=10)] == [
        RECEIVED + 5,
        RECEIVED + 10,
    ]
    assert [t for t, _ in await store.fetch_frames(mn=None, since_us=RECEIVED + 10, limit=10)] == [
        RECEIVED + 10,
        RECEIVED + 20,
    ]
    assert len(await store.fetch_frames(mn=None, since_us=None, limit=2)) == 2


async def test_value_the_database_refuses_is_not_retriable(
    store: PostgresStore, pg_migrated_dsn: str
) -> None:
    bad = Entry(frame(None, RECEIVED, ok=False, peer="bad\x00peer"))
    with pytest.raises(StorageError) as info:
        await store.write([bad])
    assert info.value.retriable is False
    assert info.value.kind == "data"
    assert store.stats().write_errors == {"data": 1}
    assert await _count(pg_migrated_dsn, "frame") == 0
    assert await store.ping()


async def test_unreachable_database_is_retriable() -> None:
    s = PostgresStore("postgresql://postgres@127.0.0.1:1/none")
    with pytest.raises(StorageError) as info:
        await s.open()
    assert info.value.retriable is True
    assert info.value.kind == "connection"
    assert not await s.ping()


async def test_plain_postgresql_takes_the_partitioned_layout(
    store: PostgresStore, pg_migrated_dsn: str
) -> None:
    await store.write([Entry(frame(None, RECEIVED, ok=False))])
    usable = await timescaledb_usable(pg_migrated_dsn)
    assert store._layout == ("timescaledb" if usable else "partitioned")
    assert DAY_US == 86_400 * 10**6
