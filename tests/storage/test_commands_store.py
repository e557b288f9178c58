"""The command table on both stores: queue, atomic claim, exchange steps, expiry, the
abandoned sweep, the automatic 1012 rules, clock skew in presence, NOTIFY."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from storage.base import Store
from storage.commands import (
    AUTO_CLOCK,
    ClockSkewRow,
    CommandListener,
    CommandStore,
    command_store,
)
from storage.postgres import PostgresStore
from storage.sqlite import SqliteStore, iso_from_us

T0 = 1_710_000_000_000_000  # 2024-03-09 16:00 UTC, in microseconds
S = 1_000_000
MN = "88888880000000000000A001"


@pytest.fixture(params=["postgres", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(kind, DSN or path); the PostgreSQL fixtures run outside the event loop."""
    if request.param == "postgres":
        return "postgres", str(request.getfixturevalue("pg_clean_dsn"))
    return "sqlite", str(tmp_path / "gw.sqlite3")


@pytest.fixture
async def store(backend: tuple[str, str]) -> AsyncIterator[Store]:
    kind, where = backend
    s: Store = (
        PostgresStore(where, pool_min=1, pool_max=3) if kind == "postgres" else (SqliteStore(where))
    )
    await s.open()
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def commands(store: Store) -> CommandStore:
    return command_store(store)


async def claim(c: CommandStore, mn: str = MN, now_us: int = T0, qn: str = "20240310000000001"):  # type: ignore[no-untyped-def]
    return await c.claim(mn, worker=3, qn=qn, now_us=now_us, deadline_us=now_us + 10 * S, ttl_s=60)


async def test_queue_claim_acknowledge_finish(commands: CommandStore) -> None:
    first = await commands.insert(MN, 1072, {"NewPW": "s3cret"}, requested_by="test")
    second = await commands.insert(MN, 1011, {}, requested_by="test")
    assert await commands.queued_mns() == {MN}
    got = await claim(commands)
    assert got is not None
    row = got.command
    assert (row.id, row.cn, row.state, row.attempts, row.worker) == (first, 1072, "sent", 1, 3)
    assert row.qn == "20240310000000001"
    assert got.password is None
    assert got.profile is None
    assert (got.over_time_s, got.re_count) == (None, None)
    # One command per device in flight: the second waits.
    assert await claim(commands) is None
    assert await commands.acknowledge(first, qn_rtn=1, now_us=T0 + S, deadline_us=T0 + 60 * S)
    assert not await commands.acknowledge(first, qn_rtn=1, now_us=T0 + S, deadline_us=T0)
    assert await commands.finish(
        first,
        state="done",
        now_us=T0 + 2 * S,
        qn_rtn=1,
        exe_rtn=1,
        acknowledged_us=None,
        answer={"k": "v"},
        reason=None,
    )
    done = await commands.get(first)
    assert done is not None
    assert (done.state, done.qn_rtn, done.exe_rtn, done.answer) == ("done", 1, 1, {"k": "v"})
    assert done.acknowledged_us == T0 + S
    assert done.finished_us == T0 + 2 * S
    assert done.parameters == {"NewPW": "***"}  # the secret is gone once finished
    assert done.deadline_us is None
    # Finishing twice changes nothing.
    assert not await commands.finish(
        first, state="failed", now_us=T0, qn_rtn=None, exe_rtn=None,
        acknowledged_us=None, answer=None, reason="x",
    )  # fmt: skip
    nxt = await claim(commands, qn="20240310000000002")
    assert nxt is not None
    assert nxt.command.id == second
    public = nxt.command.public(iso_from_us)
    assert public["created"].endswith("Z")
    assert "created_us" not in public


async def test_requeue_keeps_qn_and_attempts(commands: CommandStore) -> None:
    cid = await commands.insert(MN, 1012, {}, requested_by="test")
    got = await claim(commands)
    assert got is not None
    assert await commands.resent(cid, deadline_us=T0 + 20 * S)
    assert await commands.requeue(cid)
    again = await claim(commands, qn="20240310999999999")
    assert again is not None
    assert again.command.qn == "20240310000000001"  # the QN of the first send
    assert again.command.attempts == 3
    assert again.command.sent_us == T0


async def test_ttl_expiry(commands: CommandStore) -> None:
    short = await commands.insert(MN, 1011, {"x": "1"}, requested_by="test", ttl_s=5)
    row = await commands.get(short)
    assert row is not None
    assert row.ttl_s == 5
    created = row.created_us
    default = await commands.insert(MN, 1061, {}, requested_by="test")
    # Past the row's own ttl, within the default: the first expires, the second is claimed.
    later = created + 30 * S
    assert await commands.expire(now_us=later, ttl_s=60) == [(short, 1011)]
    got = await claim(commands, now_us=later)
    assert got is not None
    assert got.command.id == default
    expired = await commands.get(short)
    assert expired is not None
    assert (expired.state, expired.reason, expired.finished_us) == ("expired", "ttl", later)


async def test_abandoned_commands_fail(commands: CommandStore) -> None:
    a = await commands.insert(MN, 1011, {}, requested_by="test")
    b = await commands.insert("OTHER", 1011, {}, requested_by="test")
    assert await claim(commands) is not None
    assert await claim(commands, mn="OTHER") is not None
    # Deadlines are T0 + 10 s; 30 s later with a 10 s grace both are abandoned but b is kept.
    assert await commands.abandon(now_us=T0 + 30 * S, grace_s=10, keep=[b]) == [(a, 1011)]
    row = await commands.get(a)
    assert row is not None
    assert (row.state, row.reason) == ("failed", "abandoned")
    assert await commands.abandon(now_us=T0 + 15 * S, grace_s=10, keep=[]) == []


async def test_timing_and_password_come_with_the_claim(
    store: Store, commands: CommandStore
) -> None:
    await store.upsert_device(MN, {"password": "pw1", "profile": "2025"})
    cid = await commands.insert(MN, 1000, {"OverTime": "7", "ReCount": "1"}, requested_by="t")
    got = await claim(commands)
    assert got is not None
    assert got.password == "pw1"
    assert got.profile == "2025"
    await commands.finish(
        cid, state="done", now_us=T0, qn_rtn=1, exe_rtn=1, acknowledged_us=T0,
        answer=None, reason=None,
    )  # fmt: skip
    await commands.insert(MN, 1011, {}, requested_by="t")
    got = await claim(commands)
    assert got is not None
    assert (got.over_time_s, got.re_count) == (7, 1)
    await commands.set_password(MN, "pw2")
    assert (await store.load_devices())[0].password == "pw2"


async def test_auto_clock_fix_rules(commands: CommandStore) -> None:
    async def fix(now_us: int) -> str:
        return await commands.auto_clock_fix(MN, {}, now_us=now_us, period_s=3600, tries=2)

    async def end(answered: bool) -> None:
        got = await commands.claim(
            MN, worker=0, qn="20240310000000001", now_us=T0 + 10**12,
            deadline_us=T0 + 10**12, ttl_s=10**7,
        )  # fmt: skip
        assert got is not None
        await commands.finish(
            got.command.id, state="failed", now_us=T0, qn_rtn=2 if answered else None,
            exe_rtn=None, acknowledged_us=None, answer=None, reason="x",
        )  # fmt: skip

    hour = 3600 * S
    assert await fix(T0) == "queued"
    assert await fix(T0 + 10 * S) == "recent"
    await end(answered=False)
    assert await fix(T0 + 2 * hour) == "queued"
    await commands.insert(MN, 1012, {}, requested_by="operator")
    assert await fix(T0 + 4 * hour) == "pending"  # the operator's one is queued
    await end(answered=False)  # the automatic one (older id) is claimed first
    await end(answered=True)  # the operator's: refused, but answered
    assert await fix(T0 + 6 * hour) == "queued"
    await end(answered=False)
    assert await fix(T0 + 8 * hour) == "queued"
    await end(answered=False)
    # The last two 1012s were automatic and unanswered: leave the device alone.
    assert await fix(T0 + 10 * hour) == "given_up"
    rows = await commands.recent(MN, 20)
    assert sum(r.requested_by == AUTO_CLOCK for r in rows) == 4


async def test_time_request_once_while_pending(commands: CommandStore) -> None:
    assert await commands.time_request(MN, {"PolId": "w01018"})
    assert not await commands.time_request(MN, {})
    (row,) = await commands.recent(MN, 5)
    assert row.parameters == {"PolId": "w01018"}
    assert row.requested_by == "gateway:1013"


async def test_clock_skew_in_presence(store: Store, commands: CommandStore) -> None:
    await commands.write_clock_skew([ClockSkewRow(MN, 612.5, T0, "1.2.3.4:5", 1, "2017")])
    await commands.write_clock_skew([ClockSkewRow(MN, -3.0, T0 - S, "1.2.3.4:5", 1, "2017")])
    if isinstance(store, PostgresStore):
        row = await store.pool.fetchrow(
            "SELECT clock_skew_s, clock_skew_at, worker FROM hj212.presence WHERE mn = $1", MN
        )
        assert row is not None
        assert (row[0], row[1], row[2]) == (612.5, T0, 1)
    else:
        assert isinstance(store, SqliteStore)
        got = await store.call(
            "t",
            lambda db: db.execute(
                "SELECT clock_skew_s, clock_skew_at FROM presence WHERE mn = ?", (MN,)
            ).fetchone(),
        )
        assert tuple(got) == (612.5, iso_from_us(T0))


async def test_two_workers_claim_each_command_once(pg_clean_dsn: str) -> None:
    stores = [PostgresStore(pg_clean_dsn, pool_min=4, pool_max=8) for _ in range(2)]
    for s in stores:
        await s.open()
    try:
        await stores[0].migrate()
        a, b = (command_store(s) for s in stores)
        mns = [f"MN{i:03d}" for i in range(40)]
        ids = [await a.insert(mn, 1011, {}, requested_by="t") for mn in mns]

        async def grab(c: CommandStore, worker: int, mn: str) -> tuple[int, int] | None:
            got = await c.claim(
                mn, worker=worker, qn="20240310000000001", now_us=T0 + S,
                deadline_us=T0 + 10 * S, ttl_s=10**9,
            )  # fmt: skip
            return None if got is None else (got.command.id, worker)

        results = await asyncio.gather(
            *(grab(c, w, mn) for mn in mns for w, c in ((0, a), (1, b)) for _ in range(2))
        )
        won = [r for r in results if r is not None]
        assert sorted(i for i, _ in won) == sorted(ids)  # each exactly once
        rows = await stores[0].pool.fetch("SELECT id, worker, attempts FROM hj212.command")
        by_id = {r[0]: (r[1], r[2]) for r in rows}
        assert all(by_id[i] == (w, 1) for i, w in won)
    finally:
        for s in stores:
            await s.close()


async def test_insert_notifies_listeners(pg_clean_dsn: str) -> None:
    s = PostgresStore(pg_clean_dsn)
    await s.open()
    await s.migrate()
    got: asyncio.Queue[tuple[int, str, str]] = asyncio.Queue()
    ready = asyncio.Event()
    listener = CommandListener(pg_clean_dsn, retry_s=0.2)
    task = asyncio.get_running_loop().create_task(
        listener.run(lambda i, st, mn: got.put_nowait((i, st, mn)), ready.set, lambda e: None)
    )
    try:
        await asyncio.wait_for(ready.wait(), 10)
        # Any client may queue a command with plain SQL.
        conn = await asyncpg.connect(pg_clean_dsn)
        try:
            cid = await conn.fetchval(
                "INSERT INTO hj212.command (mn, cn, parameters) VALUES ($1, 1012, $2::jsonb) "
                "RETURNING id",
                "MN WITH SPACE",
                json.dumps({}),
            )
            await conn.execute("UPDATE hj212.command SET state = 'sent' WHERE id = $1", cid)
            public = await conn.fetchrow(
                "SELECT requested_by, parameters FROM hj212.command_public WHERE id = $1", cid
            )
        finally:
            await conn.close()
        assert await asyncio.wait_for(got.get(), 10) == (cid, "queued", "MN WITH SPACE")
        assert await asyncio.wait_for(got.get(), 10) == (cid, "sent", "MN WITH SPACE")
        assert public[0] == "postgres"  # requested_by defaults to the inserting role
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await s.close()


async def test_command_public_hides_secrets(pg_clean_dsn: str) -> None:
    s = PostgresStore(pg_clean_dsn)
    await s.open()
    await s.migrate()
    try:
        c = command_store(s)
        cid = await c.insert(MN, 1072, {"NewPW": "s3cret", "x": "1"}, requested_by="t")
        row: Any = await s.pool.fetchrow(
            "SELECT parameters::text FROM hj212.command_public WHERE id = $1", cid
        )
        assert json.loads(row[0]) == {"x": "1"}
        granted = await s.pool.fetchval(
            "SELECT has_table_privilege('hj212_reader', 'hj212.command_public', 'SELECT')"
        )
        assert granted
    finally:
        await s.close()


async def test_two_workers_claiming_at_once_get_one_command_of_a_device(pg_clean_dsn: str) -> None:
    """Worker A's claim is not committed yet when worker B claims: B's pick cannot see A's
    row in flight and skips the locked one, so it takes the device's second command. The
    unique index on in-flight commands per device makes B wait for A and find nothing."""
    from storage.commands import _PG_CLAIM

    store = PostgresStore(pg_clean_dsn, pool_min=1, pool_max=3)
    await store.open()
    await store.migrate()
    commands = command_store(store)
    try:
        first = await commands.insert(MN, 1011, {}, requested_by="test")
        await commands.insert(MN, 1061, {}, requested_by="test")
        async with store.pool.acquire() as a:  # the store's codecs: times as integers
            tr = a.transaction()
            await tr.start()
            row = await a.fetchrow(_PG_CLAIM, MN, 1, "20240310000000001", T0, T0 + 10 * S, 60.0)
            assert row is not None
            assert row["id"] == first
            b = asyncio.create_task(claim(commands))  # worker 3, at the same moment
            await asyncio.sleep(0.3)
            assert not b.done()  # waiting on A's uncommitted index entry
            await tr.commit()
            assert await asyncio.wait_for(b, 10) is None
            states = await a.fetch("SELECT state, worker FROM hj212.command ORDER BY id")
        assert [(r["state"], r["worker"]) for r in states] == [("sent", 1), ("queued", None)]
    finally:
        await store.close()
