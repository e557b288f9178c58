"""Choosing the layout: what migrate does about TimescaleDB, without TimescaleDB.

The decision (``timescale_plan``) is a pure function of four catalog answers, tested over
every combination; the store's handling of each outcome runs against the ordinary server
with the catalog answers stubbed (the real ones, with the extension installed, are in
test_timescaledb.py).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import asyncpg
import pytest
from storekit import RECEIVED, entry, pg_fetch, realtime, timescaledb_usable

from storage.base import StorageError
from storage.postgres import PostgresStore, TimescaleState, layout_for, timescale_plan

VERSION = "2.99.0"


def _state(
    *, installed: bool = False, available: bool = True, preloaded: bool = True, fresh: bool = True
) -> TimescaleState:
    return TimescaleState(
        installed=VERSION if installed else None,
        available=VERSION if available else None,
        preloaded=preloaded,
        fresh=fresh,
    )


# -- the decision ----------------------------------------------------------------------


def test_offered_and_preloaded_on_a_fresh_schema_is_created() -> None:
    assert timescale_plan(_state()) == ("create", None)


def test_offered_without_preloading_warns_and_stays_plain() -> None:
    action, message = timescale_plan(_state(preloaded=False))
    assert action == "none"
    assert message is not None
    assert f"timescaledb {VERSION} is available but not used" in message
    assert "shared_preload_libraries" in message
    assert "plain PostgreSQL layout" in message


@pytest.mark.parametrize("fresh", [True, False])
def test_installed_and_preloaded_is_used_as_it_is(fresh: bool) -> None:
    assert timescale_plan(_state(installed=True, fresh=fresh)) == ("none", None)


@pytest.mark.parametrize("fresh", [True, False])
def test_installed_without_preloading_is_refused_whatever_the_layout(fresh: bool) -> None:
    action, message = timescale_plan(_state(installed=True, preloaded=False, fresh=fresh))
    assert action == "refuse"
    assert message is not None
    assert f"timescaledb {VERSION} is installed in this database" in message
    assert "shared_preload_libraries" in message


@pytest.mark.parametrize("preloaded", [True, False])
def test_not_offered_is_quiet(preloaded: bool) -> None:
    for fresh in (True, False):
        assert timescale_plan(_state(available=False, preloaded=preloaded, fresh=fresh)) == (
            "none",
            None,
        )


@pytest.mark.parametrize("preloaded", [True, False])
def test_a_chosen_layout_is_never_revisited(preloaded: bool) -> None:
    # The schema exists (plain, or made before the extension was offered): no creation,
    # and no warning at every migrate.
    assert timescale_plan(_state(preloaded=preloaded, fresh=False)) == ("none", None)


def test_layout_for_existing_schemas() -> None:
    assert layout_for("p", False) == "partitioned"
    assert layout_for("p", True) == "partitioned"
    assert layout_for("r", True) == "timescaledb"
    assert layout_for("r", False) == "plain"


# -- the store with stubbed catalog answers ------------------------------------------------


def _stub_state(monkeypatch: pytest.MonkeyPatch, **changes: Any) -> None:
    """The real catalog answers (``fresh`` above all), with ``changes`` applied."""
    real = PostgresStore._timescale_state

    async def stubbed(self: PostgresStore, conn: asyncpg.Connection) -> TimescaleState:
        return dataclasses.replace(await real(self, conn), **changes)

    monkeypatch.setattr(PostgresStore, "_timescale_state", stubbed)


@pytest.fixture
async def bare_dsn(pg_clean_dsn: str) -> str:
    """The run's database without hj212 and without the extension (a server with
    TimescaleDB may have it there from another test, or from template1)."""
    conn = await asyncpg.connect(pg_clean_dsn)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"):
            await conn.execute("DROP EXTENSION timescaledb CASCADE")
    finally:
        await conn.close()
    return pg_clean_dsn


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "storage.postgres" and r.levelno == logging.WARNING
    ]


async def _frame_relkind(dsn: str) -> str:
    ((kind,),) = await pg_fetch(
        dsn, "SELECT relkind::text FROM pg_class WHERE oid = 'hj212.frame'::regclass"
    )
    return str(kind)


async def _migrate_twice_and_write(dsn: str) -> tuple[list[str], list[str], PostgresStore]:
    store = PostgresStore(dsn)
    await store.open()
    first = await store.migrate()
    second = await store.migrate()
    await store.write([entry(realtime("MN-P", "20240315103000", {"w01018": "1.5"}), RECEIVED)])
    return first, second, store


async def test_offered_but_not_preloaded_runs_plain_with_one_warning(
    bare_dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _stub_state(monkeypatch, available=VERSION, preloaded=False)
    caplog.set_level(logging.WARNING, logger="storage.postgres")
    first, second, store = await _migrate_twice_and_write(bare_dsn)
    try:
        assert not any("extension" in line for line in first)
        assert any(line.startswith("created partition hj212.frame_p") for line in first)
        assert second == []
        assert store._layout == "partitioned"
        done = await store.maintain()
        assert all(line.startswith(("created partition", "dropped partition")) for line in done)
    finally:
        await store.close()
    (warning,) = _warnings(caplog)
    assert "shared_preload_libraries" in warning
    assert await _frame_relkind(bare_dsn) == "p"
    assert await pg_fetch(bare_dsn, "SELECT count(*) FROM hj212.reading") == [(1,)]


async def test_create_extension_refused_runs_plain_with_one_warning(
    bare_dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _stub_state(monkeypatch, available=VERSION, preloaded=True)
    attempts: list[str] = []

    async def refused(self: PostgresStore) -> str:
        attempts.append(self._dsn)
        return 'InsufficientPrivilegeError: permission denied to create extension "timescaledb"'

    monkeypatch.setattr(PostgresStore, "_create_timescaledb", refused)
    caplog.set_level(logging.WARNING, logger="storage.postgres")
    first, second, store = await _migrate_twice_and_write(bare_dsn)
    await store.close()
    assert not any("extension" in line for line in first)
    assert attempts == [bare_dsn]  # tried once, by the migrate that chose the layout
    assert second == []
    assert store._layout == "partitioned"
    (warning,) = _warnings(caplog)
    assert "CREATE EXTENSION failed: InsufficientPrivilegeError: permission denied" in warning
    assert "plain PostgreSQL layout" in warning


async def test_not_offered_runs_plain_quietly(
    bare_dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _stub_state(monkeypatch, available=None, preloaded=False)
    caplog.set_level(logging.WARNING, logger="storage.postgres")
    _, second, store = await _migrate_twice_and_write(bare_dsn)
    await store.close()
    assert second == []
    assert store._layout == "partitioned"
    assert _warnings(caplog) == []


async def test_installed_but_not_preloaded_refuses_every_connection(
    bare_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stub_state(monkeypatch, installed=VERSION, preloaded=False)
    store = PostgresStore(bare_dsn)
    with pytest.raises(StorageError) as info:
        await store.open()
    assert info.value.retriable is True  # preloading and restarting fixes it
    assert info.value.kind == "schema"
    assert "shared_preload_libraries" in str(info.value)
    # Nothing was created before the refusal: not even the staging tables' DDL ran.
    assert await pg_fetch(bare_dsn, "SELECT to_regclass('hj212.schema_migrations')") == [(None,)]


async def test_catalog_answers_before_and_after_the_first_migrate(bare_dsn: str) -> None:
    store = PostgresStore(bare_dsn)
    await store.open()
    try:
        async with store.pool.acquire() as conn:
            before = await store._timescale_state(conn)
        await store.migrate()
        async with store.pool.acquire() as conn:
            after = await store._timescale_state(conn)
    finally:
        await store.close()
    assert before.fresh
    assert before.installed is None
    assert not after.fresh
    offered = await pg_fetch(
        bare_dsn, "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'"
    )
    assert before.available == (offered[0][0] if offered else None)
    assert after.installed == (after.available if store._layout == "timescaledb" else None)


async def test_a_failed_create_extension_is_a_reason_not_an_error(bare_dsn: str) -> None:
    """The real statement on a separate connection: where the server cannot create the
    extension (not offered, or offered without the library loaded, which ends that
    session) the store gets the reason and its own connections carry on."""
    store = PostgresStore(bare_dsn)
    await store.open()
    try:
        reason = await store._create_timescaledb()
        if await timescaledb_usable(bare_dsn):
            assert reason is None
        else:
            assert reason is not None
            assert "timescaledb" in reason
        assert await store.ping()
    finally:
        await store.close()
