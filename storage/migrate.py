"""The SQL migrations shipped in ``storage/migrations``: ``NNN_name.sql``, applied in order.

Numbers 001-009 belong to the storage core; 010 and up to features added later (the
device roster). Each file runs in its own transaction and is recorded in
``hj212.schema_migrations``; the runner holds a PostgreSQL advisory lock so several
worker processes starting at once apply each file exactly once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Final

MIGRATION_LOCK_KEY: Final = 0x484A_3231_3200
"""pg_advisory_lock key held while migrating ("HJ212" in ASCII, shifted): any constant works
as long as nothing else in the database uses it."""

_NAME: Final = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def filename(self) -> str:
        return f"{self.version:03d}_{self.name}.sql"


def load_migrations() -> list[Migration]:
    """Every migration file of the package, ordered by number; duplicates are an error."""
    found: dict[int, Migration] = {}
    for entry in resources.files("storage").joinpath("migrations").iterdir():
        m = _NAME.match(entry.name)
        if m is None:
            continue
        version = int(m.group(1))
        if version in found:
            raise ValueError(f"two migrations numbered {version:03d}: {entry.name}")
        found[version] = Migration(version, m.group(2), entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


SCHEMA_MIGRATIONS_DDL: Final = """
CREATE SCHEMA IF NOT EXISTS hj212;
CREATE TABLE IF NOT EXISTS hj212.schema_migrations (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
"""
