"""storage: the database side of the gateway (PostgreSQL/TimescaleDB, or an SQLite file).

``open_store(cfg)`` picks the backend from ``StorageConfig``; ``BatchWriter`` puts a
bounded, group-committing queue in front of it; ``storage.rows`` turns decoded packets
into rows. Nothing here sees a socket or exports metrics (``stats()`` snapshots do).
"""

from __future__ import annotations

from config.settings import StorageConfig
from storage.base import (
    Entry,
    ForwardTo,
    FrameRow,
    InfoRow,
    PresenceRow,
    ReadingRow,
    StatusRow,
    StorageError,
    Store,
    StoreStats,
)
from storage.rows import entry_for_packet, frame_row
from storage.writer import BatchWriter, WriterStats

__all__ = [
    "BatchWriter",
    "Entry",
    "ForwardTo",
    "FrameRow",
    "InfoRow",
    "PresenceRow",
    "ReadingRow",
    "StatusRow",
    "StorageError",
    "Store",
    "StoreStats",
    "WriterStats",
    "entry_for_packet",
    "frame_row",
    "open_store",
]


def open_store(cfg: StorageConfig) -> Store:
    """The configured store, not yet opened: PostgreSQL when ``cfg.dsn`` is set, else the
    SQLite file at ``cfg.sqlite_path``. Call ``await store.open()`` (and ``migrate()``)."""
    if cfg.dsn is not None:
        from storage.postgres import PostgresStore  # noqa: PLC0415 (asyncpg only when used)

        return PostgresStore(
            cfg.dsn.get_secret_value(),
            pool_min=cfg.pool_min,
            pool_max=cfg.pool_max,
            write_timeout_s=cfg.write_timeout_s,
            frame_retention_days=cfg.frame_retention_days,
            reading_retention_days=cfg.reading_retention_days,
            compress_after_days=cfg.compress_after_days,
        )
    from storage.sqlite import SqliteStore  # noqa: PLC0415 (sqlite3 only when used)

    return SqliteStore(
        cfg.sqlite_path,
        write_timeout_s=cfg.write_timeout_s,
        frame_retention_days=cfg.frame_retention_days,
        reading_retention_days=cfg.reading_retention_days,
    )
