"""Roster and coverage queries on PostgreSQL (``hj212.device``, ``presence``, ``frame``,
``reading`` and ``coverage_daily``).

Every function takes an asyncpg connection or pool. Times cross the SQL boundary as
integers (microseconds since 1970 UTC) converted inside the statements, so these queries
give the same answers on a plain connection and on the store's pool, whose connections
decode ``timestamptz`` as integers (storage/postgres.py).

Evaluating at a past time T (``as_of_us``): presence keeps only the latest frame time of
each MN, so for the MNs seen after T the last frame at or before T is looked up in the
frame archive (``hj212.frame_public``, the archive without raw bytes, indexed by (mn,
received_at)), within the lookback that the report needs (24 h, or the silent threshold
if longer). Everything read here is readable by the ``hj212_reader`` role, so reports run
under it; only the snapshot and the import write. Past the archive's retention
(``storage.frame_retention_days``) such MNs count as silent since before the lookback.

Schema errors (migrations not applied) surface as ``StorageError`` of kind ``schema``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Final

import asyncpg

from storage.base import StorageError
from storage.errors import map_error
from storage.roster_model import RosterDevice, RosterEntry
from storage.roster_ref import Reference, load_reference
from storage.roster_report import (
    DEFAULT_SILENT_HOURS,
    CoverageReport,
    MnCounts,
    QualityReport,
    Sighting,
    SnapshotRow,
    compute_coverage,
    compute_quality,
    day_bounds_us,
    device_city,
    lookback_us,
    snapshot_rows,
)

__all__ = [
    "DEFAULT_TIMEZONE",
    "ImportCounts",
    "connect",
    "coverage_at",
    "ensure_snapshot",
    "fetch_coverage_inputs",
    "fetch_mn_counts",
    "fetch_roster",
    "fetch_sightings",
    "fetch_snapshots",
    "import_roster",
    "now_us",
    "quality_between",
    "take_daily_snapshot",
]

DEFAULT_TIMEZONE: Final = "Asia/Shanghai"
"""Days and weeks are local calendar days (``protocol.timezone``)."""

SNAPSHOT_LOCK_CLASS: Final = 0x4A53
"""First key of the transaction-scoped advisory lock taken per snapshot day (the second
is the day's ordinal): two workers or hosts snapshotting the same day take turns."""

MN_BATCH: Final = 5_000
"""MNs per ``= ANY($1)`` lookup: keeps each statement's parameter array small."""


def _us(expr: str) -> str:
    """SQL turning a timestamptz expression into bigint microseconds since 1970."""
    return f"(extract(epoch FROM {expr}) * 1000000)::bigint"


def _ts(param: str) -> str:
    """SQL turning a bigint microseconds parameter into timestamptz."""
    return f"(timestamptz 'epoch' + {param}::bigint * interval '1 microsecond')"


CONNECT_TIMEOUT_S: Final = 10.0
"""A report or import gives up connecting after this long (the database is down or the
DSN points nowhere) instead of hanging an operator's terminal."""


def now_us() -> int:
    return time.time_ns() // 1_000


async def connect(dsn: str) -> Any:
    """A plain asyncpg connection for the roster commands (close it when done)."""
    async with _errors("connect"):
        return await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)


@contextlib.asynccontextmanager
async def _connection(conn_or_pool: Any) -> AsyncIterator[Any]:
    """A connection: the one given, or one acquired from the pool given."""
    if hasattr(conn_or_pool, "acquire"):
        async with conn_or_pool.acquire() as conn:
            yield conn
    else:
        yield conn_or_pool


@contextlib.asynccontextmanager
async def _errors(what: str) -> AsyncIterator[None]:
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        err = map_error(exc, what)
        if err.kind == "schema":
            err = StorageError(
                f"{err}; has `hj212-gateway migrate` been run?", retriable=False, kind="schema"
            )
        raise err from exc


def _batches(items: Sequence[str]) -> list[Sequence[str]]:
    return [items[i : i + MN_BATCH] for i in range(0, len(items), MN_BATCH)]


# -- import ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImportCounts:
    inserted: int
    updated: int
    unchanged: int


_ALWAYS: Final = ("unit_name", "city", "county", "credit_code", "outlet_type")
_OPTIONAL: Final = (
    "park",
    "permit_no",
    "industry",
    "networked_city",
    "networked_province",
    "monitored_content",
    "remark",
    "rtd_interval_s",
    "minute_interval_s",
    "online_after_s",
)
_SQL_TYPE: Final = {
    "networked_city": "boolean",
    "networked_province": "boolean",
    "rtd_interval_s": "integer",
    "minute_interval_s": "integer",
    "online_after_s": "integer",
}


def _import_sql(columns: Sequence[str]) -> str:
    names = ["mn", *columns]
    n = len(names)
    arrays = ", ".join(f"${i + 1}::{_SQL_TYPE.get(c, 'text')}[]" for i, c in enumerate(names))
    listed = ", ".join(names)
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns)
    old = ", ".join(f"d.{c}" for c in columns)
    new = ", ".join(f"EXCLUDED.{c}" for c in columns)
    return f"""
        INSERT INTO hj212.device AS d ({listed}, roster_source, roster_imported_at)
        SELECT u.*, ${n + 1}::text, {_ts(f"${n + 2}")}
        FROM unnest({arrays}) AS u({listed})
        ON CONFLICT (mn) DO UPDATE SET {sets},
            roster_source = EXCLUDED.roster_source,
            roster_imported_at = EXCLUDED.roster_imported_at,
            updated_at = now()
        WHERE ({old}) IS DISTINCT FROM ({new})
        RETURNING (xmax = 0) AS inserted
    """


async def import_roster(
    conn_or_pool: Any,
    entries: Sequence[RosterEntry],
    *,
    columns: Collection[str],
    source: str,
    at_us: int | None = None,
) -> ImportCounts:
    """Insert or update one ``hj212.device`` row per entry, in one transaction.

    Idempotent: a row whose roster columns are unchanged is not written. ``columns`` are
    the optional fields the file has (``RosterParse.columns``): a column absent from the
    file leaves the stored value alone, a blank cell of a present column clears it.
    Password, profile, CRC variants and ``enabled`` are never touched."""
    cols = [*_ALWAYS, *(c for c in _OPTIONAL if c in columns)]
    if not entries:
        return ImportCounts(0, 0, 0)
    arrays: list[list[Any]] = [[e.mn for e in entries]]
    arrays += [[getattr(e, c) for e in entries] for c in cols]
    at = now_us() if at_us is None else at_us
    async with _errors("device import"), _connection(conn_or_pool) as conn, conn.transaction():
        rows = await conn.fetch(_import_sql(cols), *arrays, source, at)
    inserted = sum(1 for r in rows if r[0])
    updated = len(rows) - inserted
    return ImportCounts(inserted, updated, len(entries) - len(rows))


# -- roster and presence ----------------------------------------------------------------


async def fetch_roster(conn_or_pool: Any) -> list[RosterDevice]:
    """Every device of the registry, disabled ones included (``enabled`` says which)."""
    sql = """
        SELECT mn, unit_name, credit_code, city, county, park, outlet_type,
               rtd_interval_s, minute_interval_s, hourly, online_after_s, enabled
        FROM hj212.device ORDER BY mn
    """
    async with _errors("roster"), _connection(conn_or_pool) as conn:
        rows = await conn.fetch(sql)
    return [
        RosterDevice(
            mn=r[0],
            unit_name=r[1],
            credit_code=r[2],
            city=r[3],
            county=r[4],
            park=r[5],
            outlet_type=r[6],
            rtd_interval_s=r[7],
            minute_interval_s=r[8],
            hourly=bool(r[9]),
            online_after_s=r[10],
            enabled=bool(r[11]),
        )
        for r in rows
    ]


async def fetch_sightings(conn_or_pool: Any, *, as_of_us: int, lookback: int) -> list[Sighting]:
    """What is known at ``as_of_us`` of every MN's frames (``lookback`` in microseconds)."""
    presence_sql = f"""
        SELECT mn, {_us("first_seen")}, {_us("last_seen")}, peer, frames
        FROM hj212.presence WHERE first_seen <= {_ts("$1")}
    """
    archive_sql = f"""
        SELECT mn, {_us("max(received_at)")}
        FROM hj212.frame_public
        WHERE mn = ANY($1::text[]) AND received_at > {_ts("$2")} AND received_at <= {_ts("$3")}
        GROUP BY mn
    """
    async with _errors("presence"), _connection(conn_or_pool) as conn:
        rows = await conn.fetch(presence_sql, as_of_us)
        later = [r[0] for r in rows if r[2] > as_of_us]
        known: dict[str, int] = {}
        for batch in _batches(later):
            found = await conn.fetch(archive_sql, batch, as_of_us - lookback, as_of_us)
            known.update((r[0], r[1]) for r in found)
    out: list[Sighting] = []
    for mn, first, last, peer, frames in rows:
        last_at: int | None = last if last <= as_of_us else known.get(mn)
        out.append(Sighting(mn, first, last_at, peer, int(frames)))
    return out


async def fetch_coverage_inputs(
    conn_or_pool: Any, *, as_of_us: int, silent_hours: int = DEFAULT_SILENT_HOURS
) -> tuple[list[RosterDevice], list[Sighting]]:
    """The rows ``compute_coverage`` counts: the registry and what is known of frames.

    Split from the counting so that a caller on a busy event loop (the gateway's metrics
    cache) can count in a worker thread: ~0.15 s of CPU for 12,000 devices."""
    async with _connection(conn_or_pool) as conn:
        roster = await fetch_roster(conn)
        sightings = await fetch_sightings(
            conn, as_of_us=as_of_us, lookback=lookback_us(silent_hours)
        )
    return roster, sightings


async def coverage_at(
    conn_or_pool: Any,
    *,
    as_of_us: int,
    silent_hours: int = DEFAULT_SILENT_HOURS,
    city: str | None = None,
    ref: Reference | None = None,
) -> CoverageReport:
    """The coverage report at ``as_of_us`` (storage.roster_report for the definitions)."""
    roster, sightings = await fetch_coverage_inputs(
        conn_or_pool, as_of_us=as_of_us, silent_hours=silent_hours
    )
    return compute_coverage(
        roster,
        sightings,
        ref or load_reference(),
        as_of_us=as_of_us,
        silent_hours=silent_hours,
        city=city,
    )


# -- daily snapshots ----------------------------------------------------------------------

_SNAPSHOT_COLUMNS: Final = (
    "target",
    "units",
    "units_full",
    "units_partial",
    "units_never",
    "mns",
    "mns_ever_seen",
    "mns_online",
    "mns_seen_24h",
    "mns_never",
    "mns_silent",
    "silent_hours",
    "unknown_mns",
)


async def take_daily_snapshot(
    conn_or_pool: Any,
    day: dt.date,
    *,
    tz: str = DEFAULT_TIMEZONE,
    at_us: int | None = None,
    silent_hours: int = DEFAULT_SILENT_HOURS,
    ref: Reference | None = None,
) -> list[SnapshotRow]:
    """Store the coverage of ``day`` (a local calendar day in ``tz``) per city and for
    the province in ``hj212.coverage_daily``, replacing any earlier snapshot of that day.

    The counts are taken as of the day's last instant, or as of now (``at_us``, default
    the clock) while the day is still running; so calling it again later the same day
    refreshes today's rows, and calling it for a past day gives the same rows every time
    (as long as the frame archive still covers that day). Concurrent calls for one day
    (several workers or hosts) take turns on an advisory lock, so it is safe to call from
    every process. Raises ``ValueError`` for a day that has not begun."""
    start, end = day_bounds_us(day, tz)
    now = now_us() if at_us is None else at_us
    if now < start:
        raise ValueError(f"{day} has not begun yet")
    as_of = min(now, end - 1)
    cols = ", ".join(_SNAPSHOT_COLUMNS)
    params = ", ".join(f"${i + 4}" for i in range(len(_SNAPSHOT_COLUMNS)))
    insert = f"""
        INSERT INTO hj212.coverage_daily (day, city, as_of, {cols})
        VALUES ($1, $2, {_ts("$3")}, {params})
    """
    async with _connection(conn_or_pool) as conn:
        report = await coverage_at(conn, as_of_us=as_of, silent_hours=silent_hours, ref=ref)
        rows = snapshot_rows(day, report)
        async with _errors("snapshot"), conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1::int, $2::int)",
                SNAPSHOT_LOCK_CLASS,
                day.toordinal() % 2**31,
            )
            await conn.execute("DELETE FROM hj212.coverage_daily WHERE day = $1", day)
            await conn.executemany(
                insert,
                [
                    (r.day, r.city, r.as_of_us, *(getattr(r, c) for c in _SNAPSHOT_COLUMNS))
                    for r in rows
                ],
            )
    return rows


async def ensure_snapshot(
    conn_or_pool: Any,
    day: dt.date,
    *,
    tz: str = DEFAULT_TIMEZONE,
    at_us: int | None = None,
    ref: Reference | None = None,
) -> bool:
    """Take ``day``'s snapshot unless one exists; True when it was taken now."""
    async with _connection(conn_or_pool) as conn:
        async with _errors("snapshot"):
            exists = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM hj212.coverage_daily WHERE day = $1)", day
            )
        if exists:
            return False
        await take_daily_snapshot(conn, day, tz=tz, at_us=at_us, ref=ref)
    return True


async def fetch_snapshots(
    conn_or_pool: Any, first_day: dt.date, last_day: dt.date
) -> list[SnapshotRow]:
    """Snapshot rows of the days first_day..last_day (inclusive)."""
    sql = f"""
        SELECT day, city, {_us("as_of")}, {", ".join(_SNAPSHOT_COLUMNS)}
        FROM hj212.coverage_daily WHERE day BETWEEN $1 AND $2 ORDER BY day, city
    """
    async with _errors("snapshot"), _connection(conn_or_pool) as conn:
        rows = await conn.fetch(sql, first_day, last_day)
    return [SnapshotRow(*r) for r in rows]


# -- quality --------------------------------------------------------------------------------


async def fetch_mn_counts(
    conn_or_pool: Any, *, start_us: int, end_us: int, mns: Sequence[str]
) -> list[MnCounts]:
    """Per MN, what ``hj212.reading`` holds with data_time in [start_us, end_us)."""
    sql = f"""
        SELECT mn,
               count(DISTINCT date_trunc('hour', data_time AT TIME ZONE 'UTC'))
                   FILTER (WHERE cn = 2061),
               count(DISTINCT data_time) FILTER (WHERE cn = 2011),
               count(*),
               count(*) FILTER (WHERE flag IS NOT NULL AND upper(flag) <> 'N')
        FROM hj212.reading
        WHERE mn = ANY($1::text[]) AND data_time >= {_ts("$2")} AND data_time < {_ts("$3")}
        GROUP BY mn
    """
    out: list[MnCounts] = []
    async with _errors("quality"), _connection(conn_or_pool) as conn:
        for batch in _batches(mns):
            rows = await conn.fetch(sql, batch, start_us, end_us)
            out += [MnCounts(r[0], r[1], r[2], r[3], r[4]) for r in rows]
    return out


async def quality_between(
    conn_or_pool: Any,
    *,
    start_us: int,
    end_us: int,
    city: str | None = None,
    ref: Reference | None = None,
) -> QualityReport:
    """The quality report over [start_us, end_us) (storage.roster_report definitions)."""
    reference = ref or load_reference()
    async with _connection(conn_or_pool) as conn:
        roster = await fetch_roster(conn)
        mns = [
            d.mn
            for d in roster
            if d.enabled and (city is None or device_city(d, reference) == city)
        ]
        counts = await fetch_mn_counts(conn, start_us=start_us, end_us=end_us, mns=mns)
    return compute_quality(roster, counts, reference, start_us=start_us, end_us=end_us, city=city)
