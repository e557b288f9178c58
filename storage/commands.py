"""The command table (``hj212.command``): queue, claim and record platform-to-device commands.

Any client inserts a row; the gateway worker that holds the device's connection claims it
with one atomic statement (``UPDATE ... WHERE state = 'queued'`` on a row picked with
``FOR UPDATE SKIP LOCKED``), so two workers never both send it, and records every step
of the exchange on it. One command per device is in flight at a time: a device's next
command is claimed only when none of its commands is sent or acknowledged.

PostgreSQL: the insert trigger (migration 013) sends ``NOTIFY hj212_command`` with
``"<id> <state> <mn>"``; ``CommandListener`` holds a dedicated LISTEN connection. SQLite
has no notifications: gateways poll ``queued_mns``.

Times are integers (microseconds since 1970 UTC) on the Python side, like the rest of
storage/; the caller passes ``now_us`` (only gateway/ reads clocks).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, Protocol

import asyncpg

from storage.base import StorageError, Store
from storage.postgres import PostgresStore
from storage.sqlite import SqliteStore, iso_from_us, us_from_iso

__all__ = [
    "ACTIVE_STATES",
    "AUTO_CLOCK",
    "DEVICE_TIME_REQUEST",
    "NOTIFY_CHANNEL",
    "SECRET_PARAMETERS",
    "STATES",
    "TERMINAL_STATES",
    "Claim",
    "ClockSkewRow",
    "CommandListener",
    "CommandRow",
    "CommandStore",
    "command_store",
    "redact",
]

STATES: Final = ("queued", "sent", "acknowledged", "done", "failed", "expired")
ACTIVE_STATES: Final = ("sent", "acknowledged")
TERMINAL_STATES: Final = frozenset({"done", "failed", "expired"})
NOTIFY_CHANNEL: Final = "hj212_command"
SECRET_PARAMETERS: Final = frozenset({"NewPW", "NewSK"})
"""Parameters never printed and masked in the row once the command has finished."""
MASK: Final = "***"
AUTO_CLOCK: Final = "gateway:clock_skew"
"""``requested_by`` of the 1012s the gateway sends to a device whose clock is off."""
DEVICE_TIME_REQUEST: Final = "gateway:1013"
"""``requested_by`` of the 1012 that answers a device's 1013 time-calibration request."""
_SET_TIMEOUTS_CN: Final = 1000
_SET_TIME_CN: Final = 1012


def redact(parameters: Mapping[str, str]) -> dict[str, str]:
    """``parameters`` with secret values masked."""
    return {k: (MASK if k in SECRET_PARAMETERS else v) for k, v in parameters.items()}


@dataclass(frozen=True, slots=True)
class CommandRow:
    """One row of the command table."""

    id: int
    mn: str
    cn: int
    parameters: dict[str, str]
    qn: str | None
    state: str
    requested_by: str
    created_us: int
    sent_us: int | None
    acknowledged_us: int | None
    finished_us: int | None
    ttl_s: float | None
    attempts: int
    worker: int | None
    deadline_us: int | None
    qn_rtn: int | None
    exe_rtn: int | None
    answer: Any
    reason: str | None

    def public(self, iso: Callable[[int], str]) -> dict[str, Any]:
        """A JSON-ready dict (times through ``iso``), secrets masked."""
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            if name.endswith("_us"):
                name = name[:-3]  # noqa: PLW2901 - the column name without the unit
                value = None if value is None else iso(value)
            elif name == "parameters":
                value = redact(value)
            out[name] = value
        return out


class Claim(NamedTuple):
    """A command this worker now owns, with what it needs to build the frame."""

    command: CommandRow
    password: str | None
    """The registry's password for the device (None: not registered or none recorded)."""
    profile: str | None
    """The registry's code-table profile (None: by the device's version bits)."""
    over_time_s: int | None
    """OverTime last set on the device with a 1000 that succeeded (None: never)."""
    re_count: int | None


class ClockSkewRow(NamedTuple):
    """The latest clock skew of one device, for ``hj212.presence``."""

    mn: str
    skew_s: float
    measured_us: int
    peer: str
    worker: int
    version: str


def _params(value: Any) -> dict[str, str]:
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, dict):
        return {}
    return {str(k): ("" if v is None else str(v)) for k, v in value.items()}


def _json_or_none(value: Any) -> Any:
    if value is None:
        return None
    return json.loads(value) if isinstance(value, str) else value


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)


def _int_param(params: Mapping[str, str], key: str) -> int | None:
    text = params.get(key, "")
    return int(text) if text.isdigit() else None


class CommandStore(Protocol):
    """The command table on one backend. Every method may raise ``StorageError``."""

    kind: str

    async def insert(
        self,
        mn: str,
        cn: int,
        parameters: Mapping[str, str],
        *,
        requested_by: str,
        ttl_s: float | None = None,
    ) -> int:
        """Queue a command; its id."""

    async def get(self, command_id: int) -> CommandRow | None:
        """One command, or None."""

    async def recent(self, mn: str, limit: int) -> list[CommandRow]:
        """The device's latest commands, newest first."""

    async def queued_mns(self) -> set[str]:
        """MNs that have at least one queued command."""

    async def claim(
        self, mn: str, *, worker: int, qn: str, now_us: int, deadline_us: int, ttl_s: float
    ) -> Claim | None:
        """Take the device's oldest queued, unexpired command when none of its commands is
        in flight: state sent, ``qn`` set unless it has one already (a requeued command
        keeps its QN), attempts + 1. None when there is nothing to claim."""

    async def resent(self, command_id: int, *, deadline_us: int) -> bool:
        """One more attempt of a sent command (same QN)."""

    async def acknowledge(
        self, command_id: int, *, qn_rtn: int, now_us: int, deadline_us: int
    ) -> bool:
        """9011 QnRtn=1: sent -> acknowledged."""

    async def progress(self, command_id: int, *, deadline_us: int, answer: Any) -> bool:
        """Data arrived for an active command: new deadline and answer so far."""

    async def finish(
        self,
        command_id: int,
        *,
        state: str,
        now_us: int,
        qn_rtn: int | None,
        exe_rtn: int | None,
        acknowledged_us: int | None,
        answer: Any,
        reason: str | None,
    ) -> bool:
        """An active command ends (done or failed); secret parameters are masked."""

    async def requeue(self, command_id: int) -> bool:
        """A sent command whose device went away goes back to queued (keeping its QN and
        attempts), so whichever worker holds the device next sends it again."""

    async def expire(self, *, now_us: int, ttl_s: float) -> list[tuple[int, int]]:
        """Queued commands past their ttl become expired; (id, cn) of each."""

    async def abandon(
        self, *, now_us: int, grace_s: float, keep: Iterable[int]
    ) -> list[tuple[int, int]]:
        """Active commands whose deadline passed ``grace_s`` ago (their worker died) fail
        with reason ``abandoned``; ``keep`` are ids this worker still tracks."""

    async def write_clock_skew(self, rows: Sequence[ClockSkewRow]) -> None:
        """Record the devices' latest clock skews in presence."""

    async def auto_clock_fix(
        self,
        mn: str,
        parameters: Mapping[str, str],
        *,
        now_us: int,
        period_s: float,
        tries: int,
        ttl_s: float | None = None,
    ) -> str:
        """Queue an automatic 1012 unless one was queued within ``period_s``
        (``recent``), a 1012 is queued or in flight (``pending``), or the last ``tries``
        1012s were all automatic and unanswered (``given_up``); else ``queued``."""

    async def time_request(self, mn: str, parameters: Mapping[str, str]) -> bool:
        """Queue the 1012 answering a device's 1013 unless a 1012 is queued or in flight."""

    async def set_password(self, mn: str, password: str) -> None:
        """Record the device's new password in the registry (after a 1072 succeeded)."""


# -- PostgreSQL --------------------------------------------------------------------------


def _pg_columns(t: str) -> str:
    """The columns ``_pg_row`` reads, of table alias ``t``."""
    return (
        f"{t}.id, {t}.mn, {t}.cn, {t}.parameters::text, {t}.qn, {t}.state, {t}.requested_by, "
        f"{t}.created_at, {t}.sent_at, {t}.acknowledged_at, {t}.finished_at, "
        f"extract(epoch FROM {t}.ttl)::float8, {t}.attempts, {t}.worker, {t}.deadline, "
        f"{t}.qn_rtn, {t}.exe_rtn, {t}.answer::text, {t}.reason"
    )


_PG_COLUMNS: Final = _pg_columns("hj212.command")


def _pg_row(r: Sequence[Any]) -> CommandRow:
    return CommandRow(
        r[0], r[1], r[2], _params(r[3]), r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11],
        r[12], r[13], r[14], r[15], r[16], _json_or_none(r[17]), r[18],
    )  # fmt: skip


def _pg_mask(keys: int, mask: int) -> str:
    """SQL: ``parameters`` with the keys in text[] parameter ``$keys`` set to ``$mask``."""
    return (
        f"CASE WHEN parameters ?| ${keys}::text[] THEN parameters || "
        f"(SELECT jsonb_object_agg(k, ${mask}::text) FROM unnest(${keys}::text[]) k "
        f"WHERE parameters ? k) ELSE parameters END"
    )


_PG_CLAIM: Final = f"""
WITH pick AS (
    SELECT id FROM hj212.command
    WHERE mn = $1 AND state = 'queued'
      AND created_at + coalesce(ttl, make_interval(secs => $6::float8)) > $4
      AND NOT EXISTS (SELECT 1 FROM hj212.command a
                      WHERE a.mn = $1 AND a.state IN ('sent', 'acknowledged'))
    ORDER BY id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE hj212.command c
    SET state = 'sent', worker = $2, qn = coalesce(c.qn, $3), attempts = c.attempts + 1,
        sent_at = coalesce(c.sent_at, $4), deadline = $5, reason = NULL
    FROM pick
    WHERE c.id = pick.id AND c.state = 'queued'
    RETURNING c.*
)
SELECT {_pg_columns("claimed")}, d.password, d.profile,
       (SELECT t.parameters::text FROM hj212.command t
        WHERE t.mn = $1 AND t.cn = {_SET_TIMEOUTS_CN} AND t.state = 'done'
        ORDER BY t.finished_at DESC, t.id DESC LIMIT 1)
FROM claimed LEFT JOIN hj212.device d ON d.mn = claimed.mn
"""

_PG_SKEW: Final = """
INSERT INTO hj212.presence AS p
    (mn, first_seen, last_seen, peer, worker, version, clock_skew_s, clock_skew_at)
SELECT m, t, t, pe, w, v, s, t
FROM unnest($1::text[], $2::float8[], $3::timestamptz[], $4::text[], $5::integer[],
            $6::text[]) AS u(m, s, t, pe, w, v)
ON CONFLICT (mn) DO UPDATE SET
    clock_skew_s = EXCLUDED.clock_skew_s,
    clock_skew_at = EXCLUDED.clock_skew_at
WHERE p.clock_skew_at IS NULL OR EXCLUDED.clock_skew_at >= p.clock_skew_at
"""


class PgCommands:
    """``CommandStore`` on PostgreSQL, through the store's pool."""

    kind = "postgres"

    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    async def _q(self, what: str, fn: Callable[[asyncpg.Pool], Awaitable[Any]]) -> Any:
        return await self._store.pooled(f"command {what}", fn)

    async def insert(
        self,
        mn: str,
        cn: int,
        parameters: Mapping[str, str],
        *,
        requested_by: str,
        ttl_s: float | None = None,
    ) -> int:
        return int(
            await self._q(
                "insert",
                lambda p: p.fetchval(
                    "INSERT INTO hj212.command (mn, cn, parameters, requested_by, ttl) "
                    "VALUES ($1, $2, $3::jsonb, $4, make_interval(secs => $5::float8)) "
                    "RETURNING id",
                    mn,
                    cn,
                    json.dumps(dict(parameters), ensure_ascii=False),
                    requested_by,
                    ttl_s,
                ),
            )
        )

    async def get(self, command_id: int) -> CommandRow | None:
        row = await self._q(
            "get",
            lambda p: p.fetchrow(
                f"SELECT {_PG_COLUMNS} FROM hj212.command WHERE id = $1", command_id
            ),
        )
        return None if row is None else _pg_row(row)

    async def recent(self, mn: str, limit: int) -> list[CommandRow]:
        rows = await self._q(
            "recent",
            lambda p: p.fetch(
                f"SELECT {_PG_COLUMNS} FROM hj212.command WHERE mn = $1 ORDER BY id DESC LIMIT $2",
                mn,
                limit,
            ),
        )
        return [_pg_row(r) for r in rows]

    async def queued_mns(self) -> set[str]:
        rows = await self._q(
            "queued_mns",
            lambda p: p.fetch("SELECT DISTINCT mn FROM hj212.command WHERE state = 'queued'"),
        )
        return {r[0] for r in rows}

    async def claim(
        self, mn: str, *, worker: int, qn: str, now_us: int, deadline_us: int, ttl_s: float
    ) -> Claim | None:
        async def pick(pool: asyncpg.Pool) -> Any:
            try:
                return await pool.fetchrow(_PG_CLAIM, mn, worker, qn, now_us, deadline_us, ttl_s)
            except asyncpg.UniqueViolationError:
                return None  # another worker claimed one of this device's commands first

        row = await self._q("claim", pick)
        if row is None:
            return None
        timing = _params(row[21]) if row[21] is not None else {}
        return Claim(
            _pg_row(row),
            row[19],
            row[20],
            _int_param(timing, "OverTime"),
            _int_param(timing, "ReCount"),
        )

    async def _update(self, what: str, sql: str, *args: Any) -> bool:
        status = await self._q(what, lambda p: p.execute(sql, *args))
        return bool(status.endswith(" 1"))

    async def resent(self, command_id: int, *, deadline_us: int) -> bool:
        return await self._update(
            "resent",
            "UPDATE hj212.command SET attempts = attempts + 1, deadline = $2 "
            "WHERE id = $1 AND state = 'sent'",
            command_id,
            deadline_us,
        )

    async def acknowledge(
        self, command_id: int, *, qn_rtn: int, now_us: int, deadline_us: int
    ) -> bool:
        return await self._update(
            "acknowledge",
            "UPDATE hj212.command SET state = 'acknowledged', qn_rtn = $2, "
            "acknowledged_at = $3, deadline = $4 WHERE id = $1 AND state = 'sent'",
            command_id,
            qn_rtn,
            now_us,
            deadline_us,
        )

    async def progress(self, command_id: int, *, deadline_us: int, answer: Any) -> bool:
        return await self._update(
            "progress",
            "UPDATE hj212.command SET deadline = $2, answer = $3::jsonb "
            "WHERE id = $1 AND state IN ('sent', 'acknowledged')",
            command_id,
            deadline_us,
            _dump(answer),
        )

    async def finish(
        self,
        command_id: int,
        *,
        state: str,
        now_us: int,
        qn_rtn: int | None,
        exe_rtn: int | None,
        acknowledged_us: int | None,
        answer: Any,
        reason: str | None,
    ) -> bool:
        return await self._update(
            "finish",
            "UPDATE hj212.command SET state = $2, finished_at = $3, "
            "qn_rtn = coalesce($4, qn_rtn), exe_rtn = $5, "
            "acknowledged_at = coalesce(acknowledged_at, $6), "
            "answer = coalesce($7::jsonb, answer), reason = $8, deadline = NULL, "
            f"parameters = {_pg_mask(9, 10)} "
            "WHERE id = $1 AND state IN ('sent', 'acknowledged')",
            command_id,
            state,
            now_us,
            qn_rtn,
            exe_rtn,
            acknowledged_us,
            _dump(answer),
            reason,
            sorted(SECRET_PARAMETERS),
            MASK,
        )

    async def requeue(self, command_id: int) -> bool:
        return await self._update(
            "requeue",
            "UPDATE hj212.command SET state = 'queued', worker = NULL, deadline = NULL "
            "WHERE id = $1 AND state = 'sent'",
            command_id,
        )

    async def expire(self, *, now_us: int, ttl_s: float) -> list[tuple[int, int]]:
        rows = await self._q(
            "expire",
            lambda p: p.fetch(
                "UPDATE hj212.command SET state = 'expired', finished_at = $1, "
                f"reason = 'ttl', parameters = {_pg_mask(3, 4)} "
                "WHERE state = 'queued' "
                "AND created_at + coalesce(ttl, make_interval(secs => $2::float8)) <= $1 "
                "RETURNING id, cn",
                now_us,
                ttl_s,
                sorted(SECRET_PARAMETERS),
                MASK,
            ),
        )
        return [(r[0], r[1]) for r in rows]

    async def abandon(
        self, *, now_us: int, grace_s: float, keep: Iterable[int]
    ) -> list[tuple[int, int]]:
        cutoff = now_us - int(grace_s * 1_000_000)
        rows = await self._q(
            "abandon",
            lambda p: p.fetch(
                "UPDATE hj212.command SET state = 'failed', finished_at = $1, "
                f"reason = 'abandoned', deadline = NULL, parameters = {_pg_mask(4, 5)} "
                "WHERE state IN ('sent', 'acknowledged') AND deadline < $2 "
                "AND NOT (id = ANY($3::bigint[])) RETURNING id, cn",
                now_us,
                cutoff,
                list(keep),
                sorted(SECRET_PARAMETERS),
                MASK,
            ),
        )
        return [(r[0], r[1]) for r in rows]

    async def write_clock_skew(self, rows: Sequence[ClockSkewRow]) -> None:
        if not rows:
            return
        columns = [list(c) for c in zip(*rows, strict=True)]
        await self._q("clock_skew", lambda p: p.execute(_PG_SKEW, *columns))

    async def auto_clock_fix(
        self,
        mn: str,
        parameters: Mapping[str, str],
        *,
        now_us: int,
        period_s: float,
        tries: int,
        ttl_s: float | None = None,
    ) -> str:
        async def run(pool: asyncpg.Pool) -> str:
            async with pool.acquire() as conn, conn.transaction():
                # Two workers deciding for the same MN at once: one waits for the other.
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext('hj212.command 1012 ' || $1))", mn
                )
                since = now_us - int(period_s * 1_000_000)
                if await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM hj212.command WHERE mn = $1 AND cn = $2 "
                    "AND requested_by = $3 AND created_at > $4)",
                    mn,
                    _SET_TIME_CN,
                    AUTO_CLOCK,
                    since,
                ):
                    return "recent"
                if await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM hj212.command WHERE mn = $1 AND cn = $2 "
                    "AND state IN ('queued', 'sent', 'acknowledged'))",
                    mn,
                    _SET_TIME_CN,
                ):
                    return "pending"
                last = await conn.fetch(
                    "SELECT requested_by, qn_rtn FROM hj212.command WHERE mn = $1 AND cn = $2 "
                    "AND state IN ('done', 'failed', 'expired') ORDER BY id DESC LIMIT $3",
                    mn,
                    _SET_TIME_CN,
                    tries,
                )
                if len(last) >= tries and all(r[0] == AUTO_CLOCK and r[1] is None for r in last):
                    return "given_up"
                await conn.execute(
                    "INSERT INTO hj212.command (mn, cn, parameters, requested_by, ttl, "
                    "created_at) "
                    "VALUES ($1, $2, $3::jsonb, $4, make_interval(secs => $5::float8), $6)",
                    mn,
                    _SET_TIME_CN,
                    json.dumps(dict(parameters)),
                    AUTO_CLOCK,
                    ttl_s,
                    now_us,
                )
                return "queued"

        return str(await self._q("auto_clock_fix", run))

    async def time_request(self, mn: str, parameters: Mapping[str, str]) -> bool:
        inserted = await self._q(
            "time_request",
            lambda p: p.fetchval(
                "INSERT INTO hj212.command (mn, cn, parameters, requested_by) "
                "SELECT $1, $2, $3::jsonb, $4 WHERE NOT EXISTS ("
                "  SELECT 1 FROM hj212.command WHERE mn = $1 AND cn = $2 "
                "  AND state IN ('queued', 'sent', 'acknowledged')) RETURNING id",
                mn,
                _SET_TIME_CN,
                json.dumps(dict(parameters)),
                DEVICE_TIME_REQUEST,
            ),
        )
        return inserted is not None

    async def set_password(self, mn: str, password: str) -> None:
        await self._q(
            "set_password",
            lambda p: p.execute(
                "INSERT INTO hj212.device (mn, password) VALUES ($1, $2) "
                "ON CONFLICT (mn) DO UPDATE SET password = EXCLUDED.password, "
                "updated_at = now()",
                mn,
                password,
            ),
        )


class CommandListener:
    """A dedicated PostgreSQL connection LISTENing on ``hj212_command``.

    ``run`` connects, calls ``on_ready`` (so the caller can catch up on what it missed
    while disconnected), then hands every notification to ``on_notify(id, state, mn)``;
    when the connection is lost it reconnects after ``retry_s``. Cancel the task to stop.
    """

    def __init__(self, dsn: str, *, retry_s: float) -> None:
        self._dsn = dsn
        self._retry_s = retry_s
        self.connected = False

    async def run(
        self,
        on_notify: Callable[[int, str, str], None],
        on_ready: Callable[[], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        def callback(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            parts = payload.split(" ", 2)
            if len(parts) == 3 and parts[0].isdigit():
                on_notify(int(parts[0]), parts[1], parts[2])

        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._dsn)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(NOTIFY_CHANNEL, callback)
                self.connected = True
                on_ready()
                await lost.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                on_error(exc)
            finally:
                self.connected = False
                if conn is not None:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(self._retry_s):
                            await conn.close()
            await asyncio.sleep(self._retry_s)


# -- SQLite ------------------------------------------------------------------------------

_SQ_COLUMNS: Final = (
    "id, mn, cn, parameters, qn, state, requested_by, created_at, sent_at, acknowledged_at, "
    "finished_at, ttl, attempts, worker, deadline, qn_rtn, exe_rtn, answer, reason"
)


def _us(text: str | None) -> int | None:
    return None if text is None else us_from_iso(text)


def _sq_row(r: Sequence[Any]) -> CommandRow:
    return CommandRow(
        r[0], r[1], r[2], _params(r[3]), r[4], r[5], r[6], us_from_iso(r[7]), _us(r[8]),
        _us(r[9]), _us(r[10]), r[11], r[12], r[13], _us(r[14]), r[15], r[16],
        _json_or_none(r[17]), r[18],
    )  # fmt: skip


def _transaction(db: sqlite3.Connection, fn: Callable[[], Any]) -> Any:
    db.execute("BEGIN IMMEDIATE")
    try:
        result = fn()
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return result


_SQ_EXPIRED: Final = "(julianday(?) - julianday(created_at)) * 86400.0 >= coalesce(ttl, ?)"


class SqliteCommands:
    """``CommandStore`` on the SQLite file, on the store's thread. One process owns a file
    at a time in practice; ``BEGIN IMMEDIATE`` keeps a claim atomic even if two do."""

    kind = "sqlite"

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    async def _call(self, what: str, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return await self._store.call(f"command {what}", fn)

    async def insert(
        self,
        mn: str,
        cn: int,
        parameters: Mapping[str, str],
        *,
        requested_by: str,
        ttl_s: float | None = None,
    ) -> int:
        def run(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "INSERT INTO command (mn, cn, parameters, requested_by, ttl) "
                "VALUES (?, ?, ?, ?, ?)",
                (mn, cn, json.dumps(dict(parameters), ensure_ascii=False), requested_by, ttl_s),
            )
            return int(cur.lastrowid or 0)

        return int(await self._call("insert", run))

    async def get(self, command_id: int) -> CommandRow | None:
        def run(db: sqlite3.Connection) -> CommandRow | None:
            row = db.execute(
                f"SELECT {_SQ_COLUMNS} FROM command WHERE id = ?", (command_id,)
            ).fetchone()
            return None if row is None else _sq_row(row)

        result: CommandRow | None = await self._call("get", run)
        return result

    async def recent(self, mn: str, limit: int) -> list[CommandRow]:
        def run(db: sqlite3.Connection) -> list[CommandRow]:
            rows = db.execute(
                f"SELECT {_SQ_COLUMNS} FROM command WHERE mn = ? ORDER BY id DESC LIMIT ?",
                (mn, limit),
            )
            return [_sq_row(r) for r in rows]

        result: list[CommandRow] = await self._call("recent", run)
        return result

    async def queued_mns(self) -> set[str]:
        def run(db: sqlite3.Connection) -> set[str]:
            return {
                r[0] for r in db.execute("SELECT DISTINCT mn FROM command WHERE state = 'queued'")
            }

        result: set[str] = await self._call("queued_mns", run)
        return result

    async def claim(
        self, mn: str, *, worker: int, qn: str, now_us: int, deadline_us: int, ttl_s: float
    ) -> Claim | None:
        now = iso_from_us(now_us)

        def claim(db: sqlite3.Connection) -> Claim | None:
            busy = db.execute(
                "SELECT 1 FROM command WHERE mn = ? AND state IN ('sent', 'acknowledged')",
                (mn,),
            ).fetchone()
            if busy is not None:
                return None
            pick = db.execute(
                f"SELECT id FROM command WHERE mn = ? AND state = 'queued' "
                f"AND NOT {_SQ_EXPIRED} ORDER BY id LIMIT 1",
                (mn, now, ttl_s),
            ).fetchone()
            if pick is None:
                return None
            updated = db.execute(
                "UPDATE command SET state = 'sent', worker = ?, qn = coalesce(qn, ?), "
                "attempts = attempts + 1, sent_at = coalesce(sent_at, ?), deadline = ?, "
                "reason = NULL WHERE id = ? AND state = 'queued'",
                (worker, qn, now, iso_from_us(deadline_us), pick[0]),
            )
            if updated.rowcount != 1:
                return None
            row = db.execute(
                f"SELECT {_SQ_COLUMNS} FROM command WHERE id = ?", (pick[0],)
            ).fetchone()
            device = db.execute(
                "SELECT password, profile FROM device WHERE mn = ?", (mn,)
            ).fetchone()
            timing_row = db.execute(
                "SELECT parameters FROM command WHERE mn = ? AND cn = ? AND state = 'done' "
                "ORDER BY finished_at DESC, id DESC LIMIT 1",
                (mn, _SET_TIMEOUTS_CN),
            ).fetchone()
            timing = _params(timing_row[0]) if timing_row is not None else {}
            return Claim(
                _sq_row(row),
                device[0] if device else None,
                device[1] if device else None,
                _int_param(timing, "OverTime"),
                _int_param(timing, "ReCount"),
            )

        result: Claim | None = await self._call(
            "claim", lambda db: _transaction(db, lambda: claim(db))
        )
        return result

    async def _update(self, what: str, sql: str, params: tuple[Any, ...]) -> bool:
        def run(db: sqlite3.Connection) -> bool:
            return db.execute(sql, params).rowcount == 1

        return bool(await self._call(what, run))

    async def resent(self, command_id: int, *, deadline_us: int) -> bool:
        return await self._update(
            "resent",
            "UPDATE command SET attempts = attempts + 1, deadline = ? "
            "WHERE id = ? AND state = 'sent'",
            (iso_from_us(deadline_us), command_id),
        )

    async def acknowledge(
        self, command_id: int, *, qn_rtn: int, now_us: int, deadline_us: int
    ) -> bool:
        return await self._update(
            "acknowledge",
            "UPDATE command SET state = 'acknowledged', qn_rtn = ?, acknowledged_at = ?, "
            "deadline = ? WHERE id = ? AND state = 'sent'",
            (qn_rtn, iso_from_us(now_us), iso_from_us(deadline_us), command_id),
        )

    async def progress(self, command_id: int, *, deadline_us: int, answer: Any) -> bool:
        return await self._update(
            "progress",
            "UPDATE command SET deadline = ?, answer = ? "
            "WHERE id = ? AND state IN ('sent', 'acknowledged')",
            (iso_from_us(deadline_us), _dump(answer), command_id),
        )

    async def finish(
        self,
        command_id: int,
        *,
        state: str,
        now_us: int,
        qn_rtn: int | None,
        exe_rtn: int | None,
        acknowledged_us: int | None,
        answer: Any,
        reason: str | None,
    ) -> bool:
        def run(db: sqlite3.Connection) -> bool:
            row = db.execute(
                "SELECT parameters FROM command WHERE id = ? AND state IN ('sent', 'acknowledged')",
                (command_id,),
            ).fetchone()
            if row is None:
                return False
            params = json.dumps(redact(_params(row[0])), ensure_ascii=False)
            cur = db.execute(
                "UPDATE command SET state = ?, finished_at = ?, qn_rtn = coalesce(?, qn_rtn), "
                "exe_rtn = ?, acknowledged_at = coalesce(acknowledged_at, ?), "
                "answer = coalesce(?, answer), reason = ?, deadline = NULL, parameters = ? "
                "WHERE id = ? AND state IN ('sent', 'acknowledged')",
                (
                    state,
                    iso_from_us(now_us),
                    qn_rtn,
                    exe_rtn,
                    None if acknowledged_us is None else iso_from_us(acknowledged_us),
                    _dump(answer),
                    reason,
                    params,
                    command_id,
                ),
            )
            return cur.rowcount == 1

        return bool(await self._call("finish", lambda db: _transaction(db, lambda: run(db))))

    async def requeue(self, command_id: int) -> bool:
        return await self._update(
            "requeue",
            "UPDATE command SET state = 'queued', worker = NULL, deadline = NULL "
            "WHERE id = ? AND state = 'sent'",
            (command_id,),
        )

    async def _end_many(self, what: str, where: str, params: tuple[Any, ...], set_: str) -> Any:
        def run(db: sqlite3.Connection) -> list[tuple[int, int]]:
            rows = db.execute(f"SELECT id, cn, parameters FROM command WHERE {where}", params)
            out: list[tuple[int, int]] = []
            for command_id, cn, text in rows.fetchall():
                params_text = json.dumps(redact(_params(text)), ensure_ascii=False)
                db.execute(f"UPDATE command SET {set_}, parameters = ? WHERE id = ?",
                           (params_text, command_id))  # fmt: skip
                out.append((command_id, cn))
            return out

        return await self._call(what, lambda db: _transaction(db, lambda: run(db)))

    async def expire(self, *, now_us: int, ttl_s: float) -> list[tuple[int, int]]:
        now = iso_from_us(now_us)
        result: list[tuple[int, int]] = await self._end_many(
            "expire",
            f"state = 'queued' AND {_SQ_EXPIRED}",
            (now, ttl_s),
            f"state = 'expired', finished_at = '{now}', reason = 'ttl'",
        )
        return result

    async def abandon(
        self, *, now_us: int, grace_s: float, keep: Iterable[int]
    ) -> list[tuple[int, int]]:
        now = iso_from_us(now_us)
        cutoff = iso_from_us(now_us - int(grace_s * 1_000_000))
        kept = sorted(set(keep))
        marks = ", ".join("?" for _ in kept)
        not_kept = f" AND id NOT IN ({marks})" if kept else ""
        result: list[tuple[int, int]] = await self._end_many(
            "abandon",
            f"state IN ('sent', 'acknowledged') AND deadline < ?{not_kept}",
            (cutoff, *kept),
            f"state = 'failed', finished_at = '{now}', reason = 'abandoned', deadline = NULL",
        )
        return result

    async def write_clock_skew(self, rows: Sequence[ClockSkewRow]) -> None:
        if not rows:
            return
        params = [
            (r.mn, iso_from_us(r.measured_us), iso_from_us(r.measured_us), r.peer, r.worker,
             r.version, r.skew_s, iso_from_us(r.measured_us))
            for r in rows
        ]  # fmt: skip

        def run(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO presence (mn, first_seen, last_seen, peer, worker, version, "
                "clock_skew_s, clock_skew_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (mn) DO UPDATE SET clock_skew_s = excluded.clock_skew_s, "
                "clock_skew_at = excluded.clock_skew_at "
                "WHERE clock_skew_at IS NULL OR excluded.clock_skew_at >= clock_skew_at",
                params,
            )

        await self._call("clock_skew", lambda db: _transaction(db, lambda: run(db)))

    async def auto_clock_fix(
        self,
        mn: str,
        parameters: Mapping[str, str],
        *,
        now_us: int,
        period_s: float,
        tries: int,
        ttl_s: float | None = None,
    ) -> str:
        since = iso_from_us(now_us - int(period_s * 1_000_000))

        def run(db: sqlite3.Connection) -> str:
            if db.execute(
                "SELECT 1 FROM command WHERE mn = ? AND cn = ? AND requested_by = ? "
                "AND created_at > ?",
                (mn, _SET_TIME_CN, AUTO_CLOCK, since),
            ).fetchone():
                return "recent"
            if db.execute(
                "SELECT 1 FROM command WHERE mn = ? AND cn = ? "
                "AND state IN ('queued', 'sent', 'acknowledged')",
                (mn, _SET_TIME_CN),
            ).fetchone():
                return "pending"
            last = db.execute(
                "SELECT requested_by, qn_rtn FROM command WHERE mn = ? AND cn = ? "
                "AND state IN ('done', 'failed', 'expired') ORDER BY id DESC LIMIT ?",
                (mn, _SET_TIME_CN, tries),
            ).fetchall()
            if len(last) >= tries and all(r[0] == AUTO_CLOCK and r[1] is None for r in last):
                return "given_up"
            db.execute(
                "INSERT INTO command (mn, cn, parameters, requested_by, ttl, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (mn, _SET_TIME_CN, json.dumps(dict(parameters)), AUTO_CLOCK, ttl_s,
                 iso_from_us(now_us)),
            )  # fmt: skip
            return "queued"

        return str(await self._call("auto_clock_fix", lambda db: _transaction(db, lambda: run(db))))

    async def time_request(self, mn: str, parameters: Mapping[str, str]) -> bool:
        def run(db: sqlite3.Connection) -> bool:
            if db.execute(
                "SELECT 1 FROM command WHERE mn = ? AND cn = ? "
                "AND state IN ('queued', 'sent', 'acknowledged')",
                (mn, _SET_TIME_CN),
            ).fetchone():
                return False
            db.execute(
                "INSERT INTO command (mn, cn, parameters, requested_by) VALUES (?, ?, ?, ?)",
                (mn, _SET_TIME_CN, json.dumps(dict(parameters)), DEVICE_TIME_REQUEST),
            )
            return True

        return bool(await self._call("time_request", lambda db: _transaction(db, lambda: run(db))))

    async def set_password(self, mn: str, password: str) -> None:
        def run(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO device (mn, password) VALUES (?, ?) ON CONFLICT (mn) DO UPDATE "
                "SET password = excluded.password, "
                "updated_at = strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')",
                (mn, password),
            )

        await self._call("set_password", run)


def command_store(store: Store) -> CommandStore:
    """The command table of an open ``store``."""
    if isinstance(store, PostgresStore):
        return PgCommands(store)
    if isinstance(store, SqliteStore):
        return SqliteCommands(store)
    raise StorageError(f"no command table on a {store.kind} store", retriable=False)
