"""The production store: PostgreSQL (TimescaleDB when installed) through an asyncpg pool.

Write path (one transaction per batch, durable on return):

- frames always go by binary COPY (every frame is a new row);
- value rows go by binary COPY straight into their tables when the batch cannot hold a
  row already stored (``storage.idempotency.Watermark``); otherwise, or when that COPY
  meets a unique key anyway (another worker, a restart), they are copied into per-connection
  temporary staging tables and merged with ``INSERT ... ON CONFLICT DO UPDATE``: a resend
  adds nothing, a changed value replaces the row (newest ``received_at`` wins) and
  increments ``revision``.

Times are plain integers on the Python side: a ``timestamptz`` codec with
``format='tuple'`` hands asyncpg microseconds since 2000-01-01 directly, which cut the
client's COPY cost per row from ~2.6 to ~0.8 us (performance.md section 4).

Layouts, chosen once, by the migrate that creates ``hj212.frame``:

- TimescaleDB: the server preloads the library (``shared_preload_libraries``) and the
  ``timescaledb`` extension is in the database, or the server offers it
  (``pg_available_extensions``) and the role may create it, which that migrate then
  does. The time-series tables are hypertables with compression (segmented by ``mn``)
  and retention policies, and ``maintain`` also does that work in the foreground
  (background policy jobs can fail on some PostgreSQL minor releases).
- Plain PostgreSQL: everything else. ``hj212.frame`` has native daily range partitions
  on ``received_at``, created ahead (and on demand when a batch lands past them) and
  dropped by ``maintain`` after ``frame_retention_days``. When the server offers
  TimescaleDB but it cannot be used (not preloaded, or CREATE EXTENSION refused), that
  migrate logs one warning saying why and the schema takes this layout.

An extension created in the database but not preloaded by the server makes the database
unusable for the store: its event triggers end the session (FATAL) at any DDL, the
per-connection staging tables included, and rows inserted into a hypertable would land
in its parent table, outside every chunk. Every new connection checks for that first
and the store refuses it with a ``StorageError`` that says so (retriable: preloading the
library and restarting PostgreSQL fixes it).

Connections: the staging tables are per-connection temporary tables created when the pool
opens a connection, so the store needs direct connections or session pooling; a
transaction-pooling PgBouncer would hand a batch a connection without them (and breaks
asyncpg's prepared statements anyway, ecosystem.md section 4.7).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

import asyncpg
import asyncpg.exceptions as pgexc

from storage.base import (
    DEVICE_FIELDS,
    DeviceAuth,
    Entry,
    FrameRow,
    InfoRow,
    PresenceRow,
    ReadingRow,
    StatusRow,
    StorageError,
    StoreStats,
)
from storage.errors import map_error
from storage.idempotency import Watermark, merge_presence, rounds
from storage.migrate import MIGRATION_LOCK_KEY, SCHEMA_MIGRATIONS_DDL, load_migrations
from storage.outbox_rows import insert_postgres as insert_outbox
from storage.outbox_rows import outbox_rows

T = TypeVar("T")

__all__ = ["PostgresStore"]

DAY_US: Final = 86_400_000_000
_EPOCH_2000_US: Final = 946_684_800_000_000
"""1970-01-01 -> 2000-01-01 in microseconds: PostgreSQL's binary timestamps count from 2000."""

PARTITIONS_AHEAD_DAYS: Final = 3
"""Daily frame partitions created ahead of today by migrate/maintain: a weekend without
``maintain`` still finds its partitions; a batch past them creates its own on demand."""

PARTITION_LOCK_KEY: Final = 0x484A_3231_3201
"""Advisory lock serialising partition DDL among workers."""

PING_TIMEOUT_S: Final = 5.0
"""``ping`` (readiness) answers False when the database takes longer than this."""

CLOSE_TIMEOUT_S: Final = 10.0
"""``close`` waits this long for connections to be returned, then terminates them."""

_PARTITION_NAME: Final = re.compile(r"^frame_p(\d{8})$")


def _encode_ts(us: int) -> tuple[int]:
    return (us - _EPOCH_2000_US,)


def _decode_ts(value: tuple[int]) -> int:
    return value[0] + _EPOCH_2000_US


def _column(name: str) -> str:
    return name[:-3] if name.endswith("_us") else name


FRAME_COLUMNS: Final = tuple(_column(f) for f in FrameRow._fields)
READING_COLUMNS: Final = tuple(_column(f) for f in ReadingRow._fields)
INFO_COLUMNS: Final = tuple(_column(f) for f in InfoRow._fields)
STATUS_COLUMNS: Final = tuple(_column(f) for f in StatusRow._fields)


class _Table:
    """What the write path needs to know about one value table."""

    def __init__(
        self,
        name: str,
        columns: tuple[str, ...],
        key_width: int,
        value_columns: tuple[str, ...],
        types: dict[str, str],
    ) -> None:
        self.name = name
        self.columns = columns
        self.key_width = key_width
        first = columns.index(value_columns[0])
        self.value_slice = slice(first, first + len(value_columns))
        self.received_index = columns.index("received_at")
        self.stage = f"hj212_stage_{name}"
        stage_cols = ", ".join(f"{c} {types[c]}" for c in columns)
        self.stage_ddl = f"CREATE TEMPORARY TABLE IF NOT EXISTS {self.stage} ({stage_cols})"
        key = ", ".join(columns[:key_width])
        cols = ", ".join(columns)
        updates = ", ".join(
            f"{c} = EXCLUDED.{c}" for c in columns[key_width:] if c not in columns[:key_width]
        )
        old = ", ".join(f"t.{c}" for c in value_columns)
        new = ", ".join(f"EXCLUDED.{c}" for c in value_columns)
        self.upsert_sql = f"""
WITH merged AS (
    INSERT INTO hj212.{name} AS t ({cols})
    SELECT {cols} FROM pg_temp.{self.stage}
    ON CONFLICT ({key}) DO UPDATE SET {updates},
        revision = t.revision + 1
    WHERE EXCLUDED.received_at >= t.received_at
      AND ({old}) IS DISTINCT FROM ({new})
    RETURNING (t.xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted)::bigint, count(*)::bigint FROM merged
"""


_TYPES: Final = {
    "data_time": "timestamptz",
    "mn": "text",
    "cn": "integer",
    "code": "text",
    "code_2017": "text",
    "rtd": "double precision",
    "avg": "double precision",
    "min": "double precision",
    "max": "double precision",
    "cou": "double precision",
    "zs_rtd": "double precision",
    "zs_avg": "double precision",
    "zs_min": "double precision",
    "zs_max": "double precision",
    "flag": "text",
    "eflag": "text",
    "sample_time": "timestamptz",
    "extra": "jsonb",
    "raw": "text",
    "received_at": "timestamptz",
    "pol_id": "text",
    "info_code": "text",
    "value_text": "text",
    "value_num": "double precision",
    "device": "text",
    "field": "text",
}

READING: Final = _Table(
    "reading",
    READING_COLUMNS,
    4,
    (
        "rtd",
        "avg",
        "min",
        "max",
        "cou",
        "zs_rtd",
        "zs_avg",
        "zs_min",
        "zs_max",
        "flag",
        "eflag",
        "sample_time",
        "extra",
    ),
    _TYPES,
)
INFO: Final = _Table("info", INFO_COLUMNS, 5, ("value_text", "value_num"), _TYPES)
STATUS: Final = _Table("device_status", STATUS_COLUMNS, 5, ("value_text", "value_num"), _TYPES)

_PRESENCE_SQL: Final = """
INSERT INTO hj212.presence AS p
    (mn, first_seen, last_seen, last_data_time, peer, worker, version, frames, rejects)
SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::timestamptz[],
                     $5::text[], $6::integer[], $7::text[], $8::bigint[], $9::bigint[])
ON CONFLICT (mn) DO UPDATE SET
    first_seen = LEAST(p.first_seen, EXCLUDED.first_seen),
    last_seen = GREATEST(p.last_seen, EXCLUDED.last_seen),
    last_data_time = GREATEST(p.last_data_time, EXCLUDED.last_data_time),
    peer = CASE WHEN EXCLUDED.last_seen >= p.last_seen THEN EXCLUDED.peer ELSE p.peer END,
    worker = CASE WHEN EXCLUDED.last_seen >= p.last_seen THEN EXCLUDED.worker ELSE p.worker END,
    version = CASE WHEN EXCLUDED.last_seen >= p.last_seen THEN EXCLUDED.version
                   ELSE p.version END,
    frames = p.frames + EXCLUDED.frames,
    rejects = p.rejects + EXCLUDED.rejects
"""

Layout = Literal["partitioned", "timescaledb", "plain"]

_log = logging.getLogger(__name__)

_TIMESCALE_STATE_SQL: Final = """
SELECT (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'),
       (SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'),
       EXISTS (SELECT 1 FROM pg_settings
               WHERE name = 'timescaledb.max_background_workers' AND vartype = 'integer'),
       to_regclass('hj212.frame') IS NULL
"""
"""The catalog answers ``TimescaleState`` is made of. Nothing here calls into the
extension, so it is safe when the library is not loaded. The loader, which only
``shared_preload_libraries`` can load, defines ``timescaledb.max_background_workers``
as an integer; without it the name is at most a text placeholder. (The setting
``shared_preload_libraries`` itself is readable by superusers only.)"""

_HYPERTABLE_SQL: Final = """
SELECT EXISTS (SELECT 1 FROM _timescaledb_catalog.hypertable
               WHERE schema_name = 'hj212' AND table_name = 'frame')
"""
"""Whether hj212.frame is a hypertable, from the extension's own catalog table (stable
across 2.x releases, and no function of the extension is called)."""

_CHUNKS_TO_COMPRESS_SQL: Final = """
SELECT s.chunk::text
FROM show_chunks($1::regclass, older_than => $2::timestamptz) AS s(chunk)
JOIN pg_class c ON c.oid = s.chunk
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN _timescaledb_catalog.chunk ch ON ch.schema_name = n.nspname AND ch.table_name = c.relname
WHERE ch.status <> 1 AND ch.status & 4 = 0
ORDER BY 1
"""
"""Chunks entirely older than the cutoff that are not fully compressed: never compressed
(status 0), or compressed and written to since (partial, 8; unordered, 2). Frozen (4)
chunks are left alone. The same selection as TimescaleDB's own compression policy."""


@dataclass(frozen=True, slots=True)
class TimescaleState:
    """What the catalog says about TimescaleDB, as one connection sees it."""

    installed: str | None
    """Version of the extension created in this database (``pg_extension``), if any."""
    available: str | None
    """Default version the server could create (``pg_available_extensions``), if any."""
    preloaded: bool
    """The server loaded the library at start (``shared_preload_libraries``)."""
    fresh: bool
    """``hj212.frame`` does not exist yet: this migrate chooses the layout."""


TimescaleAction = Literal["none", "create", "refuse"]


def timescale_plan(state: TimescaleState) -> tuple[TimescaleAction, str | None]:
    """What ``migrate`` does about TimescaleDB before the migrations run, and the warning
    (or, for ``refuse``, the error) to give.

    - ``refuse``: the extension is in the database and the server does not preload the
      library: any DDL would end the session, whatever the layout (checked by every new
      connection, not only by migrate);
    - ``create``: the layout is still open and the server offers and preloads the
      extension: try CREATE EXTENSION (which may still be refused: the role's rights);
    - ``none``: nothing to do. The layout is already chosen (a later migrate never
      changes it), or the extension is there and usable, or the server does not offer
      it, or offers it without preloading it (warned about: plain layout).
    """
    if state.installed is not None and not state.preloaded:
        return "refuse", (
            f"timescaledb {state.installed} is installed in this database but the server "
            "does not preload it, so every DDL statement here fails: add timescaledb to "
            "shared_preload_libraries and restart PostgreSQL"
        )
    if not state.fresh or state.installed is not None:
        return "none", None
    if state.available is None:
        return "none", None
    if not state.preloaded:
        return "none", _plain_warning(
            state.available, "the server does not preload it (shared_preload_libraries)"
        )
    return "create", None


def _plain_warning(version: str, reason: str) -> str:
    return (
        f"timescaledb {version} is available but not used: {reason}; hj212 takes the "
        "plain PostgreSQL layout (daily frame partitions, no hypertables or compression). "
        "The layout is chosen when the schema is created: to use TimescaleDB, make it "
        "usable and migrate a new database."
    )


def layout_for(relkind: str, hypertable: bool) -> Layout:
    """The layout of an existing schema from ``hj212.frame``'s ``relkind`` and whether it
    is a hypertable."""
    if relkind == "p":
        return "partitioned"
    return "timescaledb" if hypertable else "plain"


def _day_name(day: int) -> str:
    return dt.datetime.fromtimestamp(day * 86_400, dt.UTC).strftime("%Y%m%d")


def _day_literal(day: int) -> str:
    return dt.datetime.fromtimestamp(day * 86_400, dt.UTC).strftime("%Y-%m-%d 00:00:00+00")


class PostgresStore:
    """``Store`` on PostgreSQL / TimescaleDB. Bounds are constructor arguments
    (``config.settings.StorageConfig`` documents each one)."""

    kind = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        pool_min: int = 1,
        pool_max: int = 4,
        write_timeout_s: float = 30.0,
        frame_retention_days: int = 30,
        reading_retention_days: int = 0,
        compress_after_days: int = 14,
        partitions_ahead_days: int = PARTITIONS_AHEAD_DAYS,
    ) -> None:
        self._dsn = dsn
        self._pool_min = pool_min
        self._pool_max = pool_max
        self._write_timeout_s = write_timeout_s
        self._frame_retention_days = frame_retention_days
        self._reading_retention_days = reading_retention_days
        self._compress_after_days = compress_after_days
        self._ahead_days = partitions_ahead_days
        self._pool: asyncpg.Pool | None = None
        self._watermark = Watermark()
        self._stats = StoreStats()
        self._layout: Layout | None = None
        self._known_days: set[int] = set()

    # -- lifecycle -------------------------------------------------------------------

    async def _init_connection(self, conn: asyncpg.Connection) -> None:
        await conn.set_type_codec(
            "timestamptz",
            schema="pg_catalog",
            encoder=_encode_ts,
            decoder=_decode_ts,
            format="tuple",
        )
        # Before any DDL: with the extension created but not preloaded, DDL ends the session.
        action, message = timescale_plan(await self._timescale_state(conn))
        if action == "refuse":
            raise StorageError(str(message), retriable=True, kind="schema")
        for table in (READING, INFO, STATUS):
            await conn.execute(table.stage_ddl)

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._pool_min,
                max_size=self._pool_max,
                init=self._init_connection,
            )
        except Exception as exc:
            raise map_error(exc, "connect") from exc

    @property
    def pool(self) -> asyncpg.Pool:
        """The connection pool, for queries that live beside the store (reports, roster)."""
        return self._require_pool()

    async def pooled(self, what: str, fn: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
        """``fn(pool)`` for the stores that live beside this one (commands, outbox), driver
        errors coming out as ``StorageError`` naming ``what``."""
        try:
            return await fn(self.pool)
        except StorageError:
            raise
        except Exception as exc:
            raise map_error(exc, what) from exc

    def _require_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StorageError("store is not open", retriable=False, kind="other")
        return self._pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await pool.close()
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            pool.terminate()

    async def ping(self) -> bool:
        if self._pool is None:
            return False
        try:
            async with asyncio.timeout(PING_TIMEOUT_S):
                return bool(await self._pool.fetchval("SELECT 1") == 1)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False

    def stats(self) -> StoreStats:
        s = self._stats
        return StoreStats(
            rows_written=dict(s.rows_written),
            rows_revised=s.rows_revised,
            duplicates=s.duplicates,
            batches_copy=s.batches_copy,
            batches_upsert=s.batches_upsert,
            write_errors=dict(s.write_errors),
            fallbacks=s.fallbacks,
        )

    # -- migrations and maintenance ----------------------------------------------------

    async def migrate(self) -> list[str]:
        pool = self._require_pool()
        ran: list[str] = []
        try:
            async with pool.acquire() as conn:
                await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
                try:
                    await conn.execute(SCHEMA_MIGRATIONS_DDL)
                    ran += await self._prepare_timescaledb(conn)
                    done = {
                        r[0]
                        for r in await conn.fetch("SELECT version FROM hj212.schema_migrations")
                    }
                    for m in load_migrations():
                        if m.version in done:
                            continue
                        async with conn.transaction():
                            await conn.execute(m.sql)
                            await conn.execute(
                                "INSERT INTO hj212.schema_migrations (version, name) "
                                "VALUES ($1, $2)",
                                m.version,
                                m.name,
                            )
                        ran.append(m.filename)
                    self._layout = await self._detect_layout(conn)
                    if self._layout == "partitioned":
                        ran += await self._create_partitions(conn, self._days_ahead(None))
                    elif self._layout == "timescaledb":
                        ran += await self._apply_policies(conn)
                finally:
                    await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        except StorageError:
            raise
        except Exception as exc:
            raise map_error(exc, "migrate") from exc
        return ran

    async def _timescale_state(self, conn: asyncpg.Connection) -> TimescaleState:
        row = await conn.fetchrow(_TIMESCALE_STATE_SQL)
        assert row is not None
        return TimescaleState(
            installed=row[0], available=row[1], preloaded=bool(row[2]), fresh=bool(row[3])
        )

    async def _prepare_timescaledb(self, conn: asyncpg.Connection) -> list[str]:
        """Before the migrations: create the extension when this migrate chooses the
        layout and the server can run it; say why not when it offers it but cannot."""
        state = await self._timescale_state(conn)
        action, message = timescale_plan(state)
        if action == "create":
            assert state.available is not None
            reason = await self._create_timescaledb()
            if reason is None:
                return [f"created extension timescaledb {state.available}"]
            message = _plain_warning(state.available, f"CREATE EXTENSION failed: {reason}")
        if message is not None:
            _log.warning("%s", message)
        return []

    async def _create_timescaledb(self) -> str | None:
        """CREATE EXTENSION timescaledb; None when done, else why not. A connection of its
        own: if the library turns out not to be loaded after all, the server ends the
        session (FATAL), which must not take the migration lock's connection with it."""
        try:
            conn = await asyncpg.connect(self._dsn, timeout=PING_TIMEOUT_S)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            return " ".join(f"{type(exc).__name__}: {exc}".split())
        finally:
            conn.terminate()
        return None

    async def _detect_layout(self, conn: asyncpg.Connection) -> Layout:
        row = await conn.fetchrow(
            """
            SELECT c.relkind::text,
                   EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'hj212' AND c.relname = 'frame'
            """
        )
        if row is None:
            raise StorageError(
                "hj212.frame does not exist: run `hj212-gateway migrate`",
                retriable=False,
                kind="schema",
            )
        relkind = str(row[0])
        hypertable = relkind != "p" and bool(row[1]) and bool(await conn.fetchval(_HYPERTABLE_SQL))
        layout = layout_for(relkind, hypertable)
        if layout == "partitioned":
            await self._load_known_days(conn)
        return layout

    async def _load_known_days(self, conn: asyncpg.Connection) -> None:
        names = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'hj212.frame'::regclass"
        )
        days: set[int] = set()
        for (name,) in names:
            m = _PARTITION_NAME.match(name)
            if m is not None:
                d = dt.datetime.strptime(m.group(1), "%Y%m%d").replace(tzinfo=dt.UTC)
                days.add(int(d.timestamp()) // 86_400)
        self._known_days = days

    def _days_ahead(self, now_us: int | None) -> set[int]:
        now = time.time_ns() // 1000 if now_us is None else now_us
        today = now // DAY_US
        return set(range(today, today + self._ahead_days + 1))

    async def _create_partitions(self, conn: asyncpg.Connection, days: set[int]) -> list[str]:
        """Create the daily partitions of ``days`` that do not exist yet; names those made."""
        missing = sorted(days - self._known_days)
        if not missing:
            return []
        made: list[str] = []
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK_KEY)
            await self._load_known_days(conn)
            for day in missing:
                if day in self._known_days:
                    continue
                name = f"frame_p{_day_name(day)}"
                await conn.execute(
                    f"CREATE TABLE hj212.{name} PARTITION OF hj212.frame "
                    f"FOR VALUES FROM ('{_day_literal(day)}') TO ('{_day_literal(day + 1)}')"
                )
                made.append(f"created partition hj212.{name}")
        await self._load_known_days(conn)
        return made

    async def _apply_policies(self, conn: asyncpg.Connection) -> list[str]:
        """TimescaleDB: make the compression and retention policies match the settings."""
        done: list[str] = []
        for table in ("reading", "info", "device_status", "frame"):
            done += await self._policy(
                conn, "compression", "compress_after", table, self._compress_after_days
            )
        done += await self._policy(
            conn, "retention", "drop_after", "frame", self._frame_retention_days
        )
        done += await self._policy(
            conn, "retention", "drop_after", "reading", self._reading_retention_days or None
        )
        return done

    async def _policy(
        self, conn: asyncpg.Connection, kind: str, key: str, table: str, days: int | None
    ) -> list[str]:
        same = await conn.fetchval(
            "SELECT (config ->> $3)::interval = make_interval(days => $4::integer) "
            "FROM timescaledb_information.jobs WHERE proc_name = $1 "
            "AND hypertable_schema = 'hj212' AND hypertable_name = $2",
            f"policy_{kind}",
            table,
            key,
            days or 0,
        )
        if same is None and days is None:
            return []
        if same is True and days is not None:
            return []
        out: list[str] = []
        if same is not None:
            await conn.execute(f"SELECT remove_{kind}_policy('hj212.{table}', if_exists => true)")
            out.append(f"removed {kind} policy on hj212.{table}")
        if days is not None:
            await conn.execute(
                f"SELECT add_{kind}_policy('hj212.{table}', "
                f"{key} => make_interval(days => $1::integer))",
                days,
            )
            out.append(f"{kind} policy on hj212.{table}: {key} {days} days")
        return out

    async def maintain(self, *, now_us: int | None = None) -> list[str]:
        pool = self._require_pool()
        now = time.time_ns() // 1000 if now_us is None else now_us
        done: list[str] = []
        try:
            async with pool.acquire() as conn:
                self._layout = await self._detect_layout(conn)
                if self._layout == "partitioned":
                    done += await self._create_partitions(conn, self._days_ahead(now))
                    done += await self._drop_partitions(conn, now)
                elif self._layout == "timescaledb":
                    done += await self._timescale_jobs(conn, now)
                if self._reading_retention_days and self._layout != "timescaledb":
                    cutoff = now - self._reading_retention_days * DAY_US
                    status = await conn.execute(
                        "DELETE FROM hj212.reading WHERE data_time < $1", cutoff
                    )
                    done.append(
                        f"deleted {status.split()[-1]} readings older than "
                        f"{self._reading_retention_days} days"
                    )
        except StorageError:
            raise
        except Exception as exc:
            raise map_error(exc, "maintain") from exc
        return done

    async def _drop_partitions(self, conn: asyncpg.Connection, now_us: int) -> list[str]:
        # A day's partition goes once all of it is older than the retention period.
        first_kept = (now_us - self._frame_retention_days * DAY_US) // DAY_US
        done: list[str] = []
        for day in sorted(self._known_days):
            if day >= first_kept:
                break
            name = f"frame_p{_day_name(day)}"
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK_KEY)
                await conn.execute(f"DROP TABLE IF EXISTS hj212.{name}")
            done.append(f"dropped partition hj212.{name}")
        await self._load_known_days(conn)
        return done

    async def _timescale_jobs(self, conn: asyncpg.Connection, now_us: int) -> list[str]:
        """What the retention and compression policies do, now: drop the chunks past
        retention first (compressing them would be wasted), then compress every chunk
        older than ``compress_after_days`` that is not fully compressed (never
        compressed, or written to since: resends and revisions of old data). One chunk
        per statement, so each commits on its own and holds its locks briefly."""
        done: list[str] = []
        for table, days in (
            ("frame", self._frame_retention_days),
            ("reading", self._reading_retention_days),
        ):
            if not days:
                continue
            dropped = await conn.fetch(
                "SELECT drop_chunks($1::regclass, older_than => $2::timestamptz)",
                f"hj212.{table}",
                now_us - days * DAY_US,
            )
            if dropped:
                done.append(
                    f"dropped {len(dropped)} chunks of hj212.{table} older than {days} days"
                )
        cutoff = now_us - self._compress_after_days * DAY_US
        for table in ("reading", "info", "device_status", "frame"):
            chunks = await conn.fetch(_CHUNKS_TO_COMPRESS_SQL, f"hj212.{table}", cutoff)
            for (chunk,) in chunks:
                await conn.execute(
                    "SELECT compress_chunk($1::regclass, if_not_compressed => true)", chunk
                )
            if chunks:
                done.append(
                    f"compressed {len(chunks)} chunks of hj212.{table} older than "
                    f"{self._compress_after_days} days"
                )
        return done

    # -- writes ------------------------------------------------------------------------

    def _count_error(self, err: StorageError) -> None:
        errors = self._stats.write_errors
        errors[err.kind] = errors.get(err.kind, 0) + 1

    async def write(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        pool = self._require_pool()
        frames = [e.frame for e in entries if e.frame is not None]
        readings = [r for e in entries for r in e.readings]
        infos = [r for e in entries for r in e.infos]
        statuses = [r for e in entries for r in e.statuses]
        outbox = outbox_rows(entries)
        fresh, maxima = self._watermark.check(entries)
        counts: dict[str, tuple[int, int, int]] = {}
        try:
            async with asyncio.timeout(self._write_timeout_s), pool.acquire() as conn:
                if self._layout is None:
                    self._layout = await self._detect_layout(conn)
                if self._layout == "partitioned":
                    days = {f[0] // DAY_US for f in frames}
                    if not days <= self._known_days:
                        await self._create_partitions(conn, days | self._days_ahead(None))
                if fresh:
                    try:
                        async with conn.transaction():
                            await self._copy(conn, frames, readings, infos, statuses)
                            if outbox:
                                await insert_outbox(conn, outbox)
                    except pgexc.UniqueViolationError:
                        # Rows this process has not seen are in the table (another worker,
                        # an earlier run): redo the batch by the idempotent path.
                        self._stats.fallbacks += 1
                        fresh = False
                if not fresh:
                    async with conn.transaction():
                        counts = await self._upsert(conn, frames, readings, infos, statuses)
                        if outbox:
                            await insert_outbox(conn, outbox)
        except StorageError as known:
            self._count_error(known)
            raise
        except Exception as exc:
            mapped = map_error(exc, "write")
            self._count_error(mapped)
            raise mapped from exc
        self._watermark.advance(maxima)
        written = self._stats.rows_written
        written["frame"] = written.get("frame", 0) + len(frames)
        if fresh:
            self._stats.batches_copy += 1
            for name, rows in (
                ("reading", readings),
                ("info", infos),
                ("device_status", statuses),
            ):
                if rows:
                    written[name] = written.get(name, 0) + len(rows)
        else:
            self._stats.batches_upsert += 1
            for name, (changed, dups, revs) in counts.items():
                written[name] = written.get(name, 0) + changed
                self._stats.duplicates += dups
                self._stats.rows_revised += revs

    async def _copy(
        self,
        conn: asyncpg.Connection,
        frames: list[FrameRow],
        readings: list[ReadingRow],
        infos: list[InfoRow],
        statuses: list[StatusRow],
    ) -> None:
        if frames:
            await conn.copy_records_to_table(
                "frame", schema_name="hj212", records=frames, columns=FRAME_COLUMNS
            )
        for table, rows in ((READING, readings), (INFO, infos), (STATUS, statuses)):
            if rows:
                await conn.copy_records_to_table(
                    table.name, schema_name="hj212", records=rows, columns=table.columns
                )

    async def _upsert(
        self,
        conn: asyncpg.Connection,
        frames: list[FrameRow],
        readings: list[ReadingRow],
        infos: list[InfoRow],
        statuses: list[StatusRow],
    ) -> dict[str, tuple[int, int, int]]:
        """Frames by COPY, value rows merged; table -> (rows changed, duplicates, revisions)."""
        if frames:
            await conn.copy_records_to_table(
                "frame", schema_name="hj212", records=frames, columns=FRAME_COLUMNS
            )
        counts: dict[str, tuple[int, int, int]] = {}
        for table, rows in ((READING, readings), (INFO, infos), (STATUS, statuses)):
            if not rows:
                continue
            changed = dups = revs = 0
            for part in rounds(rows, table.key_width, table.received_index):
                await conn.execute(f"TRUNCATE pg_temp.{table.stage}")
                await conn.copy_records_to_table(table.stage, records=part, columns=table.columns)
                inserted, merged = await conn.fetchrow(table.upsert_sql)
                changed += merged
                revs += merged - inserted
                dups += len(part) - merged
            counts[table.name] = (changed, dups, revs)
        return counts

    async def write_presence(self, rows: Sequence[PresenceRow]) -> None:
        if not rows:
            return
        pool = self._require_pool()
        merged = merge_presence(rows)
        columns: list[list[Any]] = [list(c) for c in zip(*merged, strict=True)]
        try:
            async with asyncio.timeout(self._write_timeout_s):
                await pool.execute(_PRESENCE_SQL, *columns)
        except Exception as exc:
            mapped = map_error(exc, "presence")
            self._count_error(mapped)
            raise mapped from exc
        written = self._stats.rows_written
        written["presence"] = written.get("presence", 0) + len(merged)

    # -- reads -------------------------------------------------------------------------

    async def fetch_frames(
        self, *, mn: str | None, since_us: int | None, limit: int
    ) -> list[tuple[int, bytes]]:
        """Accepted frames with ``received_at >= since_us``, oldest first."""
        pool = self._require_pool()
        try:
            rows = await pool.fetch(
                "SELECT received_at, raw FROM hj212.frame "
                "WHERE ok AND ($1::text IS NULL OR mn = $1) "
                "AND ($2::timestamptz IS NULL OR received_at >= $2) "
                "ORDER BY received_at, id LIMIT $3",
                mn,
                since_us,
                limit,
            )
        except Exception as exc:
            raise map_error(exc, "fetch_frames") from exc
        return [(r[0], r[1]) for r in rows]

    # -- the device registry -------------------------------------------------------------

    async def load_devices(self) -> list[DeviceAuth]:
        pool = self._require_pool()
        try:
            rows = await pool.fetch(
                "SELECT mn, password, enabled, profile, crc_variants FROM hj212.device"
            )
        except Exception as exc:
            raise map_error(exc, "load_devices") from exc
        return [
            DeviceAuth(r["mn"], r["password"], r["enabled"], r["profile"], tuple(r["crc_variants"]))
            for r in rows
        ]

    async def record_password(self, mn: str, password: str) -> bool:
        pool = self._require_pool()
        try:
            status = await pool.execute(
                "UPDATE hj212.device SET password = $2, updated_at = now() "
                "WHERE mn = $1 AND password IS NULL",
                mn,
                password,
            )
        except Exception as exc:
            raise map_error(exc, "record_password") from exc
        return bool(status == "UPDATE 1")

    async def upsert_device(self, mn: str, values: dict[str, object]) -> bool:
        unknown = set(values) - set(DEVICE_FIELDS)
        if unknown:
            raise StorageError(f"unknown device fields: {sorted(unknown)}", retriable=False)
        cols = list(values)
        names = ", ".join(["mn", *cols])
        params = ", ".join(f"${i}" for i in range(1, len(cols) + 2))
        updates = ", ".join([*(f"{c} = EXCLUDED.{c}" for c in cols), "updated_at = now()"])
        sql = (
            f"INSERT INTO hj212.device ({names}) VALUES ({params}) "
            f"ON CONFLICT (mn) DO UPDATE SET {updates} RETURNING (xmax = 0) AS created"
        )
        pool = self._require_pool()
        try:
            created = await pool.fetchval(sql, mn, *(values[c] for c in cols))
        except Exception as exc:
            raise map_error(exc, "upsert_device") from exc
        return bool(created)

    async def get_device(self, mn: str) -> dict[str, object] | None:
        pool = self._require_pool()
        try:
            row = await pool.fetchrow("SELECT * FROM hj212.device WHERE mn = $1", mn)
        except Exception as exc:
            raise map_error(exc, "get_device") from exc
        if row is None:
            return None
        out: dict[str, object] = dict(row)
        out["has_password"] = out.pop("password") is not None
        return out

    async def quarantined(self, mn: str) -> list[tuple[int, bytes]]:
        pool = self._require_pool()
        try:
            rows = await pool.fetch(
                "SELECT received_at, raw FROM hj212.quarantine WHERE mn = $1 "
                "ORDER BY received_at, id",
                mn,
            )
        except Exception as exc:
            raise map_error(exc, "quarantined") from exc
        return [(r[0], bytes(r[1])) for r in rows]

    async def release_quarantine(self, mn: str) -> int:
        pool = self._require_pool()
        try:
            status = await pool.execute(
                "UPDATE hj212.frame SET reason = 'approved' "
                "WHERE mn = $1 AND reason = 'quarantine'",
                mn,
            )
        except Exception as exc:
            raise map_error(exc, "release_quarantine") from exc
        return int(status.split()[-1])
