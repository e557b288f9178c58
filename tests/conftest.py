"""Fixtures shared by every test directory: PostgreSQL databases and throwaway clusters.

- ``pg_admin_dsn``: the server to use (env ``HJ212_TEST_DSN``, default the local one).
- ``pg_dsn``: a database ``hj212_test_<random>`` created for this test run, dropped at
  its end.
- ``pg_clean_dsn``: ``pg_dsn`` with the ``hj212`` schema dropped before the test (the
  test migrates); ``pg_migrated_dsn``: the same, migrated.
- ``throwaway_cluster``: a private PostgreSQL cluster (initdb + pg_ctl in a temporary
  directory, free port) for tests that stop or break a database.

Without a reachable PostgreSQL these fixtures skip the test, except under ``CI=true``,
where they fail it (design.md section 9). Tests using them are marked ``postgres``
automatically.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# The test directories tests/storage, tests/protocol and tests/gateway share their names
# with the packages; pytest puts tests/ on sys.path, where they would shadow the real
# packages as namespace packages. The project root first keeps the real ones in front.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_BIN = Path(os.environ.get("HJ212_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
CONNECT_TIMEOUT_S = 5.0
PG_FIXTURES = frozenset(
    {"pg_admin_dsn", "pg_dsn", "pg_clean_dsn", "pg_migrated_dsn", "throwaway_cluster"}
)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL needed under CI=true: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL not available: {reason}")


def _with_database(dsn: str, database: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{database}"


async def _admin(dsn: str, *statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PG_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def pg_admin_dsn() -> str:
    return os.environ.get("HJ212_TEST_DSN", DEFAULT_DSN)


@pytest.fixture(scope="session")
def pg_dsn(pg_admin_dsn: str) -> Iterator[str]:
    name = f"hj212_test_{secrets.token_hex(4)}"
    try:
        asyncio.run(_admin(pg_admin_dsn, f"CREATE DATABASE {name}"))
    except Exception as exc:
        _unavailable(f"{type(exc).__name__}: {exc}")
    try:
        yield _with_database(pg_admin_dsn, name)
    finally:
        asyncio.run(_admin(pg_admin_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def pg_clean_dsn(pg_dsn: str) -> str:
    """The run's database with no ``hj212`` schema (tests that migrate themselves)."""
    asyncio.run(_admin(pg_dsn, "DROP SCHEMA IF EXISTS hj212 CASCADE"))
    return pg_dsn


@pytest.fixture
def pg_migrated_dsn(pg_clean_dsn: str) -> str:
    """The run's database with a freshly migrated ``hj212`` schema."""
    from storage.postgres import PostgresStore

    async def migrate() -> None:
        store = PostgresStore(pg_clean_dsn, pool_min=1, pool_max=2)
        await store.open()
        try:
            await store.migrate()
        finally:
            await store.close()

    asyncio.run(migrate())
    return pg_clean_dsn


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the ``postgres`` user."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@dataclass
class Cluster:
    """A private PostgreSQL cluster. ``dsn`` reaches its ``postgres`` database."""

    directory: Path
    port: int
    dsn: str
    log: Path
    running: bool = field(default=False)

    def _pg_ctl(self, *args: str) -> None:
        data = str(self.directory / "data")
        cmd = [str(PG_BIN / "pg_ctl"), "-D", data, "-l", str(self.log), "-w", "-t", "60", *args]
        subprocess.run(_as_postgres(cmd), check=True, capture_output=True, timeout=90)

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} -c fsync=off"
        self._pg_ctl("-o", opts, "start")
        self.running = True

    def stop(self) -> None:
        """Stop at once (``immediate``): connections see the server vanish."""
        self._pg_ctl("-m", "immediate", "stop")
        self.running = False


@pytest.fixture
def throwaway_cluster() -> Iterator[Cluster]:
    if not (PG_BIN / "initdb").exists():
        _unavailable(f"no initdb in {PG_BIN}")
    directory = Path(tempfile.mkdtemp(prefix="hj212-pg-"))
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    port = _free_port()
    cluster = Cluster(
        directory=directory,
        port=port,
        dsn=f"postgresql://postgres@127.0.0.1:{port}/postgres",
        log=directory / "server.log",
    )
    try:
        subprocess.run(
            _as_postgres(
                [
                    str(PG_BIN / "initdb"),
                    "-D",
                    str(directory / "data"),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        cluster.start()
    except (subprocess.SubprocessError, OSError) as exc:
        shutil.rmtree(directory, ignore_errors=True)
        _unavailable(f"cannot start a throwaway cluster: {exc}")
    try:
        yield cluster
    finally:
        if cluster.running:
            with contextlib.suppress(subprocess.SubprocessError):
                cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)
