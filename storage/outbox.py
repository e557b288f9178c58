"""The forwarding outbox: what each gateway worker still has to send to each upstream.

Rows are written by the stores with the frames they forward (``storage.outbox_rows``);
these queries read them in sending order, record how each one was settled and delete
old ones. One ``Outbox`` per open store (``outbox_store``); every method may raise
``StorageError``.

- ``load``: the pending rows of one upstream that one worker received, in id order (the
  order the frames were stored, so per device the order they arrived), after a cursor.
- ``older_elsewhere``: the devices that still have older pending rows held by another
  worker (the device reconnected to this worker): their new rows wait, so a device's
  frames never overtake each other across workers.
- ``settle``: confirmations (and frames given up), many rows in one statement; the
  frame's bytes are dropped then, the row stays for duplicate detection.
- ``backlog``: pending rows and the receive time of the oldest, for the metrics.
- ``prune``: delete settled rows queued before a cutoff, in bounded chunks.

Times are integers (microseconds since 1970 UTC); the caller passes them (only gateway/
reads clocks).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, NamedTuple, Protocol

import asyncpg

from storage.base import StorageError, Store
from storage.postgres import PostgresStore
from storage.sqlite import SqliteStore, iso_from_us, us_from_iso

__all__ = ["OUTCOMES", "Outbox", "OutboxItem", "Settled", "outbox_store"]

OUTCOMES: Final = ("9014", "written", "unanswered", "refused")
"""How a row was settled: the upstream's 9014 arrived; written to the upstream (the frame
asked for no reply); sent ``forward.confirm_resends`` + 1 times on live connections without
a 9014; refused (a rewrite that failed its check: never sent)."""


class OutboxItem(NamedTuple):
    """One pending row, as the forwarder needs it."""

    id: int
    mn: str
    raw: bytes
    confirm: bool
    qn: str | None
    received_at_us: int


class Settled(NamedTuple):
    """The outcome of one row, to record."""

    id: int
    outcome: str
    """One of ``OUTCOMES``."""
    attempts: int
    sent_at_us: int | None
    """First write to the upstream (None: never written)."""
    at_us: int


class Outbox(Protocol):
    async def load(self, upstream: str, worker: int, after_id: int, limit: int) -> list[OutboxItem]:
        """Pending rows of ``upstream`` received by ``worker`` with id > ``after_id``."""

    async def older_elsewhere(
        self, upstream: str, worker: int, first_ids: Mapping[str, int]
    ) -> set[str]:
        """The MNs of ``first_ids`` (MN -> this worker's oldest pending id) for which
        another worker holds an older pending row of ``upstream``."""

    async def settle(self, rows: Sequence[Settled]) -> None:
        """Record outcomes (rows already settled are overwritten with the same facts)."""

    async def backlog(self, upstream: str, worker: int) -> tuple[int, int | None]:
        """(pending rows, received_at_us of the oldest or None) of ``upstream`` and ``worker``."""

    async def prune(self, before_us: int, limit: int) -> int:
        """Delete up to ``limit`` settled rows queued before ``before_us``; the count."""


_PG_LOAD: Final = """
SELECT id, mn, raw, confirm, qn, received_at FROM hj212.forward_outbox
WHERE upstream = $1 AND worker = $2 AND confirmed_at IS NULL AND id > $3
ORDER BY id LIMIT $4
"""
_PG_OLDER: Final = """
SELECT n.mn FROM unnest($3::text[], $4::bigint[]) AS n(mn, first_id)
WHERE EXISTS (
    SELECT 1 FROM hj212.forward_outbox o
    WHERE o.upstream = $1 AND o.mn = n.mn AND o.confirmed_at IS NULL AND o.id < n.first_id
      AND o.worker <> $2)
"""
_PG_SETTLE: Final = """
UPDATE hj212.forward_outbox o
SET outcome = u.outcome, attempts = u.attempts, sent_at = u.sent_at, confirmed_at = u.at,
    raw = NULL
FROM unnest($1::bigint[], $2::text[], $3::integer[], $4::timestamptz[], $5::timestamptz[])
    AS u(id, outcome, attempts, sent_at, at)
WHERE o.id = u.id
"""
_PG_BACKLOG: Final = """
SELECT (SELECT count(*) FROM hj212.forward_outbox
        WHERE upstream = $1 AND worker = $2 AND confirmed_at IS NULL),
       (SELECT received_at FROM hj212.forward_outbox
        WHERE upstream = $1 AND worker = $2 AND confirmed_at IS NULL ORDER BY id LIMIT 1)
"""
_PG_PRUNE: Final = """
WITH doomed AS (
    SELECT id FROM hj212.forward_outbox
    WHERE queued_at < $1 AND confirmed_at IS NOT NULL LIMIT $2)
DELETE FROM hj212.forward_outbox o USING doomed WHERE o.id = doomed.id
"""


class PgOutbox:
    """``Outbox`` on PostgreSQL, through the store's pool."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    async def _q(self, what: str, fn: Callable[[asyncpg.Pool], Awaitable[Any]]) -> Any:
        return await self._store.pooled(f"outbox {what}", fn)

    async def load(self, upstream: str, worker: int, after_id: int, limit: int) -> list[OutboxItem]:
        rows = await self._q("load", lambda p: p.fetch(_PG_LOAD, upstream, worker, after_id, limit))
        return [OutboxItem(r[0], r[1], bytes(r[2]), r[3], r[4], r[5]) for r in rows]

    async def older_elsewhere(
        self, upstream: str, worker: int, first_ids: Mapping[str, int]
    ) -> set[str]:
        if not first_ids:
            return set()
        mns = list(first_ids)
        ids = [first_ids[mn] for mn in mns]
        rows = await self._q(
            "older_elsewhere", lambda p: p.fetch(_PG_OLDER, upstream, worker, mns, ids)
        )
        return {r[0] for r in rows}

    async def settle(self, rows: Sequence[Settled]) -> None:
        if not rows:
            return
        columns = [list(c) for c in zip(*rows, strict=True)]
        await self._q("settle", lambda p: p.execute(_PG_SETTLE, *columns))

    async def backlog(self, upstream: str, worker: int) -> tuple[int, int | None]:
        row = await self._q("backlog", lambda p: p.fetchrow(_PG_BACKLOG, upstream, worker))
        return int(row[0]), row[1]

    async def prune(self, before_us: int, limit: int) -> int:
        status = await self._q("prune", lambda p: p.execute(_PG_PRUNE, before_us, limit))
        return int(str(status).split()[-1])


class SqliteOutbox:
    """``Outbox`` on the SQLite file, on the store's thread."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    async def _call(self, what: str, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return await self._store.call(f"outbox {what}", fn)

    async def load(self, upstream: str, worker: int, after_id: int, limit: int) -> list[OutboxItem]:
        def run(db: sqlite3.Connection) -> list[OutboxItem]:
            rows = db.execute(
                "SELECT id, mn, raw, confirm, qn, received_at FROM forward_outbox "
                "WHERE upstream = ? AND worker = ? AND confirmed_at IS NULL AND id > ? "
                "ORDER BY id LIMIT ?",
                (upstream, worker, after_id, limit),
            )
            return [
                OutboxItem(i, mn, bytes(raw), bool(c), qn, us_from_iso(t))
                for i, mn, raw, c, qn, t in rows
            ]

        result: list[OutboxItem] = await self._call("load", run)
        return result

    async def older_elsewhere(
        self, upstream: str, worker: int, first_ids: Mapping[str, int]
    ) -> set[str]:
        if not first_ids:
            return set()
        items = list(first_ids.items())

        def run(db: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            for mn, first in items:
                row = db.execute(
                    "SELECT 1 FROM forward_outbox WHERE upstream = ? AND mn = ? "
                    "AND confirmed_at IS NULL AND id < ? AND worker <> ? LIMIT 1",
                    (upstream, mn, first, worker),
                ).fetchone()
                if row is not None:
                    found.add(mn)
            return found

        result: set[str] = await self._call("older_elsewhere", run)
        return result

    async def settle(self, rows: Sequence[Settled]) -> None:
        if not rows:
            return
        params = [
            (
                r.outcome,
                r.attempts,
                None if r.sent_at_us is None else iso_from_us(r.sent_at_us),
                iso_from_us(r.at_us),
                r.id,
            )
            for r in rows
        ]

        def run(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "UPDATE forward_outbox SET outcome = ?, attempts = ?, sent_at = ?, "
                    "confirmed_at = ?, raw = NULL WHERE id = ?",
                    params,
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

        await self._call("settle", run)

    async def backlog(self, upstream: str, worker: int) -> tuple[int, int | None]:
        def run(db: sqlite3.Connection) -> tuple[int, int | None]:
            where = "WHERE upstream = ? AND worker = ? AND confirmed_at IS NULL"
            (count,) = db.execute(
                f"SELECT count(*) FROM forward_outbox {where}", (upstream, worker)
            ).fetchone()
            oldest = db.execute(
                f"SELECT received_at FROM forward_outbox {where} ORDER BY id LIMIT 1",
                (upstream, worker),
            ).fetchone()
            return int(count), None if oldest is None else us_from_iso(oldest[0])

        result: tuple[int, int | None] = await self._call("backlog", run)
        return result

    async def prune(self, before_us: int, limit: int) -> int:
        cutoff = iso_from_us(before_us)

        def run(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "DELETE FROM forward_outbox WHERE id IN (SELECT id FROM forward_outbox "
                "WHERE queued_at < ? AND confirmed_at IS NOT NULL LIMIT ?)",
                (cutoff, limit),
            )
            return int(cur.rowcount)

        result: int = await self._call("prune", run)
        return result


def outbox_store(store: Store) -> Outbox:
    """The forwarding outbox of an open ``store``."""
    if isinstance(store, PostgresStore):
        return PgOutbox(store)
    if isinstance(store, SqliteStore):
        return SqliteOutbox(store)
    raise StorageError(f"no forwarding outbox on a {store.kind} store", retriable=False)
