"""The embedded default store: one SQLite file, so a newcomer can run the gateway at once.

Same logical tables, keys and idempotency as PostgreSQL (design.md section 4), without
schemas (tables are named ``reading``, ``info``, ``device_status``, ``frame``, ``device``,
``presence``, plus the ``frame_public`` view), hypertables or partitions.

Threading: every call runs on one dedicated thread that owns the connection, so the event
loop never blocks on disk. Durability: WAL journal with ``synchronous=FULL``, one
transaction per batch; when ``write`` returns, the batch survives a power cut.

Times are stored as ISO-8601 UTC text with a fixed width,
``2024-03-15T02:30:00.000000Z``: readable by anyone opening the file, understood by
SQLite's date functions, and ordered correctly by plain text comparison (so indexes and
``ORDER BY`` work on them).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Final, TypeVar

from storage.base import (
    DEVICE_FIELDS,
    DeviceAuth,
    Entry,
    InfoRow,
    PresenceRow,
    ReadingRow,
    StatusRow,
    StorageError,
    StoreStats,
)
from storage.idempotency import Watermark, merge_presence, rounds
from storage.outbox_rows import insert_sqlite as insert_outbox
from storage.outbox_rows import outbox_rows

__all__ = ["SqliteStore", "iso_from_us", "us_from_iso"]

T = TypeVar("T")

DAY_US: Final = 86_400_000_000
BUSY_TIMEOUT_MS: Final = 5_000
"""How long a statement waits for a lock held by another process on the same file (a
second gateway, an operator's sqlite3 shell) before failing with a retriable error."""
TIME_CACHE_SIZE: Final = 65_536
"""Distinct times whose text is remembered: rows of one packet share a DataTime, and a
batch holds a few thousand packets."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US: Final = timedelta(microseconds=1)


@lru_cache(maxsize=TIME_CACHE_SIZE)
def iso_from_us(us: int) -> str:
    """Microseconds since 1970 UTC -> ``2024-03-15T02:30:00.000000Z``."""
    return (_EPOCH + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def us_from_iso(text: str) -> int:
    return (datetime.fromisoformat(text) - _EPOCH) // _ONE_US


def _iso_or_none(us: int | None) -> str | None:
    return None if us is None else iso_from_us(us)


_SCHEMA: Final = (
    (
        1,
        "core",
        """
CREATE TABLE reading (
    data_time TEXT NOT NULL, mn TEXT NOT NULL, cn INTEGER NOT NULL, code TEXT NOT NULL,
    code_2017 TEXT, rtd REAL, avg REAL, min REAL, max REAL, cou REAL,
    zs_rtd REAL, zs_avg REAL, zs_min REAL, zs_max REAL, flag TEXT, eflag TEXT,
    sample_time TEXT, extra TEXT, raw TEXT NOT NULL, received_at TEXT NOT NULL,
    revision INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (mn, cn, data_time, code)
);
CREATE TABLE info (
    data_time TEXT NOT NULL, mn TEXT NOT NULL, cn INTEGER NOT NULL, pol_id TEXT NOT NULL,
    info_code TEXT NOT NULL, value_text TEXT NOT NULL, value_num REAL,
    received_at TEXT NOT NULL, revision INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (mn, cn, data_time, pol_id, info_code)
);
CREATE TABLE device_status (
    data_time TEXT NOT NULL, mn TEXT NOT NULL, cn INTEGER NOT NULL, device TEXT NOT NULL,
    field TEXT NOT NULL, value_text TEXT NOT NULL, value_num REAL,
    received_at TEXT NOT NULL, revision INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (mn, cn, data_time, device, field)
);
CREATE TABLE frame (
    id INTEGER PRIMARY KEY, received_at TEXT NOT NULL, peer TEXT NOT NULL,
    worker INTEGER NOT NULL, mn TEXT, st TEXT, cn TEXT, qn TEXT, ok INTEGER NOT NULL,
    reason TEXT, quirks TEXT NOT NULL DEFAULT '[]', raw BLOB NOT NULL
);
CREATE INDEX frame_received_idx ON frame (received_at);
CREATE INDEX frame_mn_received_idx ON frame (mn, received_at);
CREATE VIEW frame_public AS
    SELECT received_at, id, peer, worker, mn, st, cn, qn, ok, reason, quirks,
           length(raw) AS raw_bytes
    FROM frame;
CREATE TABLE device (
    mn TEXT PRIMARY KEY, unit_name TEXT, city TEXT, county TEXT, park TEXT,
    credit_code TEXT, permit_no TEXT, industry TEXT, outlet_type TEXT,
    monitored TEXT NOT NULL DEFAULT '[]', rtd_interval_s INTEGER, minute_interval_s INTEGER,
    hourly INTEGER NOT NULL DEFAULT 1, password TEXT, profile TEXT,
    crc_variants TEXT NOT NULL DEFAULT '[]', enabled INTEGER NOT NULL DEFAULT 1,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'))
);
CREATE TABLE presence (
    mn TEXT PRIMARY KEY, first_seen TEXT NOT NULL, last_seen TEXT NOT NULL,
    last_data_time TEXT, peer TEXT NOT NULL, worker INTEGER NOT NULL,
    version TEXT NOT NULL, frames INTEGER NOT NULL DEFAULT 0,
    rejects INTEGER NOT NULL DEFAULT 0
);
""",
    ),
    (
        2,
        "auth",
        """
CREATE VIEW quarantine AS
    SELECT received_at, id, peer, worker, mn, st, cn, qn, quirks, raw
    FROM frame WHERE reason = 'quarantine';
CREATE INDEX frame_quarantine_idx ON frame (mn, received_at) WHERE reason = 'quarantine'
""",
    ),
    (
        3,
        "command",
        # Platform-to-device commands, as hj212.command (PostgreSQL migration 013) with
        # JSON as text and ttl in seconds; no NOTIFY here: gateways poll (storage.commands).
        """
CREATE TABLE command (
    id INTEGER PRIMARY KEY AUTOINCREMENT, mn TEXT NOT NULL, cn INTEGER NOT NULL,
    parameters TEXT NOT NULL DEFAULT '{}', qn TEXT,
    state TEXT NOT NULL DEFAULT 'queued' CHECK (
        state IN ('queued', 'sent', 'acknowledged', 'done', 'failed', 'expired')),
    requested_by TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
    sent_at TEXT, acknowledged_at TEXT, finished_at TEXT, ttl REAL,
    attempts INTEGER NOT NULL DEFAULT 0, worker INTEGER, deadline TEXT,
    qn_rtn INTEGER, exe_rtn INTEGER, answer TEXT, reason TEXT
);
CREATE INDEX command_queued_idx ON command (mn, id) WHERE state = 'queued';
CREATE INDEX command_active_idx ON command (mn) WHERE state IN ('sent', 'acknowledged');
CREATE INDEX command_mn_created_idx ON command (mn, created_at);
ALTER TABLE presence ADD COLUMN clock_skew_s REAL;
ALTER TABLE presence ADD COLUMN clock_skew_at TEXT
""",
    ),
    (
        4,
        "forward",
        # Store and forward to upstream platforms, as hj212.forward_outbox (PostgreSQL
        # migration 014; storage.outbox_rows, storage.outbox).
        """
CREATE TABLE forward_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, upstream TEXT NOT NULL, digest BLOB NOT NULL,
    mn TEXT NOT NULL, worker INTEGER NOT NULL, received_at TEXT NOT NULL,
    queued_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
    confirm INTEGER NOT NULL, qn TEXT, raw BLOB, attempts INTEGER NOT NULL DEFAULT 0,
    sent_at TEXT, confirmed_at TEXT,
    outcome TEXT CHECK (outcome IN ('9014', 'written', 'unanswered', 'refused')),
    UNIQUE (upstream, digest)
);
CREATE INDEX forward_outbox_pending_idx ON forward_outbox (upstream, worker, id)
    WHERE confirmed_at IS NULL;
CREATE INDEX forward_outbox_pending_mn_idx ON forward_outbox (upstream, mn, id)
    WHERE confirmed_at IS NULL;
CREATE INDEX forward_outbox_queued_idx ON forward_outbox (queued_at)
""",
    ),
)


class _SqlTable:
    def __init__(
        self, name: str, columns: tuple[str, ...], key_width: int, values: tuple[str, ...]
    ) -> None:
        self.name = name
        self.key_width = key_width
        first = columns.index(values[0])
        self.value_slice = slice(first, first + len(values))
        self.received_index = columns.index("received_at")
        marks = ", ".join("?" * len(columns))
        cols = ", ".join(columns)
        self.insert = f"INSERT INTO {name} ({cols}) VALUES ({marks})"
        self.insert_new = f"INSERT INTO {name} ({cols}) VALUES ({marks}) ON CONFLICT DO NOTHING"
        sets = ", ".join(f"{c} = ?" for c in columns[key_width:])
        key = " AND ".join(f"{c} = ?" for c in columns[:key_width])
        differs = " OR ".join(f"{c} IS NOT ?" for c in values)
        self.update = (
            f"UPDATE {name} SET {sets}, revision = revision + 1 "
            f"WHERE {key} AND received_at <= ? AND ({differs})"
        )
        self.nvalues = len(values)


def _col(name: str) -> str:
    return name[:-3] if name.endswith("_us") else name


_READING: Final = _SqlTable(
    "reading",
    tuple(_col(f) for f in ReadingRow._fields),
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
)
_INFO: Final = _SqlTable(
    "info", tuple(_col(f) for f in InfoRow._fields), 5, ("value_text", "value_num")
)
_STATUS: Final = _SqlTable(
    "device_status", tuple(_col(f) for f in StatusRow._fields), 5, ("value_text", "value_num")
)
_I_SAMPLE: Final = ReadingRow._fields.index("sample_time_us")
_I_READING_RECEIVED: Final = ReadingRow._fields.index("received_at_us")

_FRAME_INSERT: Final = (
    "INSERT INTO frame (received_at, peer, worker, mn, st, cn, qn, ok, reason, quirks, raw) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

_PRESENCE_UPSERT: Final = """
INSERT INTO presence (mn, first_seen, last_seen, last_data_time, peer, worker, version,
                      frames, rejects)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (mn) DO UPDATE SET
    first_seen = min(first_seen, excluded.first_seen),
    last_seen = max(last_seen, excluded.last_seen),
    last_data_time = CASE
        WHEN excluded.last_data_time IS NULL THEN last_data_time
        WHEN last_data_time IS NULL OR excluded.last_data_time > last_data_time
            THEN excluded.last_data_time
        ELSE last_data_time END,
    peer = CASE WHEN excluded.last_seen >= last_seen THEN excluded.peer ELSE peer END,
    worker = CASE WHEN excluded.last_seen >= last_seen THEN excluded.worker ELSE worker END,
    version = CASE WHEN excluded.last_seen >= last_seen THEN excluded.version ELSE version END,
    frames = frames + excluded.frames,
    rejects = rejects + excluded.rejects
"""


def _reading_params(r: ReadingRow) -> tuple[Any, ...]:
    p = list(r)
    p[0] = iso_from_us(r.data_time_us)
    p[_I_SAMPLE] = _iso_or_none(r.sample_time_us)
    p[_I_READING_RECEIVED] = iso_from_us(r.received_at_us)
    return tuple(p)


def _small_params(r: InfoRow | StatusRow) -> tuple[Any, ...]:
    return (iso_from_us(r[0]), *r[1:7], iso_from_us(r[7]))


def _map_sqlite_error(exc: BaseException, what: str) -> StorageError:
    message = f"{what}: {type(exc).__name__}: {exc}"
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, TimeoutError):
        return StorageError(f"{what}: timed out", retriable=True, kind="timeout")
    if isinstance(exc, sqlite3.IntegrityError):
        return StorageError(message, retriable=False, kind="constraint")
    if isinstance(exc, sqlite3.DataError | sqlite3.InterfaceError | OverflowError):
        return StorageError(message, retriable=False, kind="data")
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        if "locked" in text or "busy" in text:
            return StorageError(message, retriable=True, kind="conflict")
        if "no such table" in text or "no such column" in text:
            return StorageError(message, retriable=False, kind="schema")
        # disk I/O error, disk full, unable to open the file
        return StorageError(message, retriable=True, kind="resources")
    if isinstance(exc, OSError):
        return StorageError(message, retriable=True, kind="resources")
    return StorageError(message, retriable=False, kind="other")


class SqliteStore:
    """``Store`` on an SQLite file (the default when no DSN is configured)."""

    kind = "sqlite"

    def __init__(
        self,
        path: str,
        *,
        write_timeout_s: float = 30.0,
        frame_retention_days: int = 30,
        reading_retention_days: int = 0,
    ) -> None:
        self._path = path
        self._write_timeout_s = write_timeout_s
        self._frame_retention_days = frame_retention_days
        self._reading_retention_days = reading_retention_days
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._watermark = Watermark()
        self._stats = StoreStats()

    # -- the thread --------------------------------------------------------------------

    async def _run(self, what: str, fn: Callable[[], T], limit_s: float | None = None) -> T:
        if self._executor is None:
            raise StorageError("store is not open", retriable=False, kind="other")
        loop = asyncio.get_running_loop()
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the
            # cancellation of a task whose future completes at the same moment, and a
            # cancelled loop (a stopping gateway's sweep) would then run on for ever.
            async with asyncio.timeout(limit_s):
                return await loop.run_in_executor(self._executor, fn)
        except Exception as exc:
            raise _map_sqlite_error(exc, what) from exc

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageError("store is not open", retriable=False, kind="other")
        return self._conn

    async def call(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the store's thread, within ``write_timeout_s``: for
        queries that live beside the store (``storage.commands``). Errors come out as
        ``StorageError``."""
        return await self._run(what, lambda: fn(self._db()), self._write_timeout_s)

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hj212-sqlite")

        def connect() -> None:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            self._conn = conn

        try:
            await self._run("open", connect)
        except StorageError:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def close(self) -> None:
        executor = self._executor
        if executor is None:
            return

        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        try:
            await self._run("close", close)
        finally:
            self._executor = None
            executor.shutdown(wait=True)

    async def ping(self) -> bool:
        try:
            return await self._run(
                "ping", lambda: self._db().execute("SELECT 1").fetchone() == (1,)
            )
        except StorageError:
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

    async def migrate(self) -> list[str]:
        def migrate() -> list[str]:
            db = self._db()
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                "name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            done = {r[0] for r in db.execute("SELECT version FROM schema_migrations")}
            ran: list[str] = []
            for version, name, ddl in _SCHEMA:
                if version in done:
                    continue
                db.execute("BEGIN IMMEDIATE")
                try:
                    for statement in ddl.split(";\n"):
                        if statement.strip():
                            db.execute(statement)
                    db.execute(
                        "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                        (version, name, iso_from_us(time.time_ns() // 1000)),
                    )
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                ran.append(f"sqlite {version:03d}_{name}")
            return ran

        return await self._run("migrate", migrate)

    # -- writes ------------------------------------------------------------------------

    async def write(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        frames = [
            (
                iso_from_us(f.received_at_us),
                f.peer,
                f.worker,
                f.mn,
                f.st,
                f.cn,
                f.qn,
                int(f.ok),
                f.reason,
                json.dumps(list(f.quirks)),
                f.raw,
            )
            for f in (e.frame for e in entries)
            if f is not None
        ]
        readings = [r for e in entries for r in e.readings]
        infos = [r for e in entries for r in e.infos]
        statuses = [r for e in entries for r in e.statuses]
        outbox = outbox_rows(entries)
        fresh, maxima = self._watermark.check(entries)

        def write() -> tuple[bool, dict[str, tuple[int, int, int]]]:
            db = self._db()
            if fresh:
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.executemany(_FRAME_INSERT, frames)
                    db.executemany(_READING.insert, map(_reading_params, readings))
                    db.executemany(_INFO.insert, map(_small_params, infos))
                    db.executemany(_STATUS.insert, map(_small_params, statuses))
                    insert_outbox(db, outbox, iso_from_us)
                    db.execute("COMMIT")
                except sqlite3.IntegrityError:
                    # A key this process has not seen is stored already: redo by merging.
                    db.execute("ROLLBACK")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                else:
                    return True, {}
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(_FRAME_INSERT, frames)
                insert_outbox(db, outbox, iso_from_us)
                counts = {
                    "reading": self._merge(db, _READING, readings, _reading_params),
                    "info": self._merge(db, _INFO, infos, _small_params),
                    "device_status": self._merge(db, _STATUS, statuses, _small_params),
                }
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return False, counts

        try:
            plain, counts = await self._run("write", write, self._write_timeout_s)
        except StorageError as err:
            self._stats.write_errors[err.kind] = self._stats.write_errors.get(err.kind, 0) + 1
            raise
        self._watermark.advance(maxima)
        written = self._stats.rows_written
        written["frame"] = written.get("frame", 0) + len(frames)
        if plain:
            self._stats.batches_copy += 1
            for name, rows in (
                ("reading", readings),
                ("info", infos),
                ("device_status", statuses),
            ):
                if rows:
                    written[name] = written.get(name, 0) + len(rows)
            return
        if fresh:
            self._stats.fallbacks += 1
        self._stats.batches_upsert += 1
        for name, (changed, dups, revs) in counts.items():
            if changed:
                written[name] = written.get(name, 0) + changed
            self._stats.duplicates += dups
            self._stats.rows_revised += revs

    @staticmethod
    def _merge(
        db: sqlite3.Connection,
        table: _SqlTable,
        rows: Sequence[Any],
        params: Callable[[Any], tuple[Any, ...]],
    ) -> tuple[int, int, int]:
        """Insert-or-revise each row; (rows changed, duplicates, revisions)."""
        if not rows:
            return 0, 0, 0
        changed = dups = revs = 0
        kw = table.key_width
        vs = table.value_slice
        ri = table.received_index
        for part in rounds(rows, kw, ri):
            for row in part:
                p = params(row)
                if db.execute(table.insert_new, p).rowcount == 1:
                    changed += 1
                    continue
                if db.execute(table.update, (*p[kw:], *p[:kw], p[ri], *p[vs])).rowcount == 1:
                    changed += 1
                    revs += 1
                else:
                    dups += 1
        return changed, dups, revs

    async def write_presence(self, rows: Sequence[PresenceRow]) -> None:
        if not rows:
            return
        merged = merge_presence(rows)
        params = [
            (
                r.mn,
                iso_from_us(r.first_seen_us),
                iso_from_us(r.last_seen_us),
                _iso_or_none(r.last_data_time_us),
                r.peer,
                r.worker,
                r.version,
                r.frames,
                r.rejects,
            )
            for r in merged
        ]

        def write() -> None:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(_PRESENCE_UPSERT, params)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

        try:
            await self._run("presence", write, self._write_timeout_s)
        except StorageError as err:
            self._stats.write_errors[err.kind] = self._stats.write_errors.get(err.kind, 0) + 1
            raise
        written = self._stats.rows_written
        written["presence"] = written.get("presence", 0) + len(merged)

    # -- reads and maintenance -----------------------------------------------------------

    async def fetch_frames(
        self, *, mn: str | None, since_us: int | None, limit: int
    ) -> list[tuple[int, bytes]]:
        """Accepted frames with ``received_at >= since_us``, oldest first."""
        since = None if since_us is None else iso_from_us(since_us)

        def fetch() -> list[tuple[int, bytes]]:
            cur = self._db().execute(
                "SELECT received_at, raw FROM frame WHERE ok = 1 "
                "AND (?1 IS NULL OR mn = ?1) AND (?2 IS NULL OR received_at >= ?2) "
                "ORDER BY received_at, id LIMIT ?3",
                (mn, since, limit),
            )
            return [(us_from_iso(t), bytes(raw)) for t, raw in cur]

        return await self._run("fetch_frames", fetch)

    async def maintain(self, *, now_us: int | None = None) -> list[str]:
        now = time.time_ns() // 1000 if now_us is None else now_us

        def maintain() -> list[str]:
            db = self._db()
            done: list[str] = []
            cutoff = iso_from_us(now - self._frame_retention_days * DAY_US)
            n = db.execute("DELETE FROM frame WHERE received_at < ?", (cutoff,)).rowcount
            done.append(f"deleted {n} frames older than {self._frame_retention_days} days")
            if self._reading_retention_days:
                cutoff = iso_from_us(now - self._reading_retention_days * DAY_US)
                n = db.execute("DELETE FROM reading WHERE data_time < ?", (cutoff,)).rowcount
                done.append(f"deleted {n} readings older than {self._reading_retention_days} days")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return done

        return await self._run("maintain", maintain)

    # -- the device registry -------------------------------------------------------------

    async def load_devices(self) -> list[DeviceAuth]:
        def load() -> list[DeviceAuth]:
            rows = self._db().execute(
                "SELECT mn, password, enabled, profile, crc_variants FROM device"
            )
            return [
                DeviceAuth(mn, pw, bool(enabled), profile, tuple(json.loads(variants or "[]")))
                for mn, pw, enabled, profile, variants in rows
            ]

        return await self._run("load_devices", load)

    async def record_password(self, mn: str, password: str) -> bool:
        def record() -> bool:
            cur = self._db().execute(
                "UPDATE device SET password = ?, updated_at = ? WHERE mn = ? AND password IS NULL",
                (password, iso_from_us(time.time_ns() // 1000), mn),
            )
            return cur.rowcount == 1

        return await self._run("record_password", record)

    async def upsert_device(self, mn: str, values: dict[str, object]) -> bool:
        unknown = set(values) - set(DEVICE_FIELDS)
        if unknown:
            raise StorageError(f"unknown device fields: {sorted(unknown)}", retriable=False)
        cols = list(values)
        params = [
            json.dumps(list(v)) if c == "crc_variants" and isinstance(v, (list, tuple)) else v
            for c, v in values.items()
        ]

        def upsert() -> bool:
            db = self._db()
            exists = db.execute("SELECT 1 FROM device WHERE mn = ?", (mn,)).fetchone()
            now = iso_from_us(time.time_ns() // 1000)
            if exists:
                if cols:
                    sets = ", ".join(f"{c} = ?" for c in cols)
                    db.execute(
                        f"UPDATE device SET {sets}, updated_at = ? WHERE mn = ?",
                        (*params, now, mn),
                    )
                return False
            names = ", ".join(["mn", *cols])
            marks = ", ".join("?" for _ in range(len(cols) + 1))
            db.execute(f"INSERT INTO device ({names}) VALUES ({marks})", (mn, *params))
            return True

        return await self._run("upsert_device", upsert)

    async def get_device(self, mn: str) -> dict[str, object] | None:
        def get() -> dict[str, object] | None:
            cur = self._db().execute("SELECT * FROM device WHERE mn = ?", (mn,))
            row = cur.fetchone()
            if row is None:
                return None
            out: dict[str, object] = dict(zip([d[0] for d in cur.description], row, strict=True))
            out["has_password"] = out.pop("password") is not None
            out["enabled"] = bool(out["enabled"])
            out["crc_variants"] = json.loads(str(out["crc_variants"]))
            return out

        return await self._run("get_device", get)

    async def quarantined(self, mn: str) -> list[tuple[int, bytes]]:
        def fetch() -> list[tuple[int, bytes]]:
            rows = self._db().execute(
                "SELECT received_at, raw FROM quarantine WHERE mn = ? ORDER BY received_at, id",
                (mn,),
            )
            return [(us_from_iso(t), bytes(raw)) for t, raw in rows]

        return await self._run("quarantined", fetch)

    async def release_quarantine(self, mn: str) -> int:
        def release() -> int:
            cur = self._db().execute(
                "UPDATE frame SET reason = 'approved' WHERE mn = ? AND reason = 'quarantine'",
                (mn,),
            )
            return cur.rowcount

        return await self._run("release_quarantine", release)
