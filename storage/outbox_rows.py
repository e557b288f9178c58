"""Outbox rows written by the stores, in the transaction that stores their frames.

An ``Entry`` whose ``forward`` names upstream platforms adds one row per upstream to the
forwarding outbox (``hj212.forward_outbox``, SQLite ``forward_outbox``): written with the
frame and its values or not at all, so a frame replied to as durable is also queued for
every upstream it was selected for. The queries that read and confirm the rows are in
``storage.outbox``.

Duplicates: the row key is (upstream, digest of the frame's bytes). A resent frame, the
same frame twice in one batch, or a batch written twice (the spool's redelivery after a
crash, storage/spool.py) adds nothing, so no frame is queued twice for one upstream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Final

from storage.base import Entry

__all__ = [
    "DIGEST_BYTES",
    "OutboxRow",
    "frame_digest",
    "insert_postgres",
    "insert_sqlite",
    "outbox_rows",
]

DIGEST_BYTES: Final = 16
"""BLAKE2b-128: a collision between two different frames of one upstream would drop the
second, and 2^-64 over a year of a fleet's frames is negligible; the index stays small."""

OutboxRow = tuple[str, bytes, str, int, int, bool, str | None, bytes]
"""(upstream, digest, mn, worker, received_at_us, confirm, qn, raw)."""

_PG_INSERT: Final = """
INSERT INTO hj212.forward_outbox (upstream, digest, mn, worker, received_at, confirm, qn, raw)
SELECT u, d, m, w, r, c, q, b
FROM unnest($1::text[], $2::bytea[], $3::text[], $4::integer[], $5::timestamptz[],
            $6::boolean[], $7::text[], $8::bytea[]) WITH ORDINALITY AS t(u, d, m, w, r, c, q, b, n)
ORDER BY n
ON CONFLICT (upstream, digest) DO NOTHING
"""
"""Ids (the sending order) are drawn in batch order: ``ORDER BY n`` (the position in the
arrays) makes that explicit rather than left to the plan."""

SQLITE_INSERT: Final = (
    "INSERT INTO forward_outbox (upstream, digest, mn, worker, received_at, confirm, qn, raw) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (upstream, digest) DO NOTHING"
)


def frame_digest(raw: bytes) -> bytes:
    return hashlib.blake2b(raw, digest_size=DIGEST_BYTES).digest()


def outbox_rows(entries: Sequence[Entry]) -> list[OutboxRow]:
    """The outbox rows of ``entries`` in batch order (the sending order), one per frame and
    upstream; a frame repeated within the batch is kept once."""
    rows: list[OutboxRow] = []
    seen: set[tuple[str, bytes]] = set()
    for entry in entries:
        forward = entry.forward
        frame = entry.frame
        if forward is None or frame is None or frame.mn is None:
            continue
        digest = frame_digest(frame.raw)
        for upstream in forward.upstreams:
            key = (upstream, digest)
            if key in seen:
                continue
            seen.add(key)
            rows.append(
                (
                    upstream,
                    digest,
                    frame.mn,
                    frame.worker,
                    frame.received_at_us,
                    forward.confirm,
                    frame.qn,
                    frame.raw,
                )
            )
    return rows


async def insert_postgres(conn: Any, rows: Sequence[OutboxRow]) -> None:
    """Insert ``rows`` on ``conn`` (an asyncpg connection inside the batch's transaction)."""
    columns = [list(c) for c in zip(*rows, strict=True)]
    await conn.execute(_PG_INSERT, *columns)


def insert_sqlite(db: Any, rows: Sequence[OutboxRow], iso: Any) -> None:
    """Insert ``rows`` on ``db`` (the store's sqlite3 connection, inside its transaction);
    ``iso`` turns microseconds into the store's time text."""
    db.executemany(
        SQLITE_INSERT,
        [(u, d, mn, w, iso(t), int(c), qn, raw) for u, d, mn, w, t, c, qn, raw in rows],
    )
