"""Map database driver errors onto ``StorageError`` with ``retriable`` and a bounded ``kind``.

Retriable: the database could not be reached or went away, the statement timed out, the
server is shutting down, out of resources, or the transaction lost a conflict
(serialization failure, deadlock). Trying the same batch again later may succeed.

Not retriable: the batch itself is wrong (data exceptions such as a NUL byte in text or a
time out of range, constraint violations, client-side encoding errors) or the schema is
(undefined table or column: migrations not applied). Retrying would fail forever; the
writer bisects such a batch to isolate the entry that causes it.

``kind`` values are a closed set (a metric label): connection, timeout, resources,
conflict, data, constraint, schema, permission, other.
"""

from __future__ import annotations

import asyncio
from typing import Final

import asyncpg
import asyncpg.exceptions as pgexc
from asyncpg.exceptions import _base as pgbase

from storage.base import StorageError

KINDS: Final = (
    "connection",
    "timeout",
    "resources",
    "conflict",
    "data",
    "constraint",
    "schema",
    "permission",
    "other",
)

# SQLSTATE class (first two characters) -> (retriable, kind).
_BY_CLASS: Final[dict[str, tuple[bool, str]]] = {
    "08": (True, "connection"),  # connection exception
    "53": (True, "resources"),  # insufficient resources (disk full, too many connections)
    "57": (True, "connection"),  # operator intervention (admin shutdown, cannot connect now)
    "58": (True, "resources"),  # system error (I/O error)
    "40": (True, "conflict"),  # transaction rollback (serialization failure, deadlock)
    # invalid transaction state: 25006 read_only_sql_transaction is a standby after a
    # failover (the DSN still points at the old primary): the server, not the batch.
    "25": (True, "connection"),
    "55": (True, "conflict"),  # object not in prerequisite state (lock not available)
    "22": (False, "data"),  # data exception
    "23": (False, "constraint"),  # integrity constraint violation
    "42": (False, "schema"),  # syntax error or access rule violation
    "3F": (False, "schema"),  # invalid schema name
}


def map_error(exc: BaseException, what: str = "storage") -> StorageError:
    """The ``StorageError`` for a driver (or OS) exception, chained by the caller."""
    if isinstance(exc, StorageError):
        return exc
    message = f"{what}: {type(exc).__name__}: {exc}"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return StorageError(f"{what}: timed out", retriable=True, kind="timeout")
    if isinstance(exc, pgexc.InsufficientPrivilegeError):
        return StorageError(message, retriable=False, kind="permission")
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        if state == "57014":  # query_canceled: statement_timeout or a cancel request
            return StorageError(message, retriable=True, kind="timeout")
        retriable, kind = _BY_CLASS.get(state[:2], (False, "other"))
        return StorageError(message, retriable=retriable, kind=kind)
    if isinstance(exc, pgbase.DataError):
        # Client-side: a value asyncpg cannot encode for its column.
        return StorageError(message, retriable=False, kind="data")
    if isinstance(exc, pgbase.InterfaceError | ConnectionError | OSError):
        # Connection closed underneath us, connection refused, reset by peer.
        return StorageError(message, retriable=True, kind="connection")
    return StorageError(message, retriable=False, kind="other")
