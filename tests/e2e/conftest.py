"""Fixtures that run a real gateway in-process on port 0."""

from __future__ import annotations

import asyncio
import atexit
import io
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import uvloop

from config import Settings, load_settings
from gateway.app import Gateway


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every end-to-end test runs on the default loop and on uvloop (what ``serve`` uses),
    except the long fault tests marked ``one_loop``: uvloop only."""
    if item.get_closest_marker("one_loop") is not None:
        return {"uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


_SPOOL_ROOT = tempfile.mkdtemp(prefix="hj212-test-spool-")
atexit.register(shutil.rmtree, _SPOOL_ROOT, ignore_errors=True)


def gateway_settings(storage: dict[str, Any], **sections: dict[str, Any]) -> Settings:
    """Settings for a test gateway: loopback, free ports, short linger, given storage."""
    overrides: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "metrics": {"host": "127.0.0.1", "port": 0},
        # Each gateway spools into a directory of its own (a spool directory is locked
        # by the process using it), not into ./hj212-spool of the checkout.
        "storage": {
            "linger_ms": 20,
            "presence_interval_s": 0.2,
            "spool_dir": tempfile.mkdtemp(dir=_SPOOL_ROOT),
            **storage,
        },
        "log": {"level": "warning", "format": "json"},
        # Test devices here answer no commands, and their frames carry fixed 2024 QNs: the
        # gateway's own 1012s (clock fix, answer to a 1013) would mix with the replies the
        # tests compare. tests/e2e/test_commands*.py turn them back on where they test them.
        "commands": {"clock_skew_fix": False, "answer_time_requests": False},
    }
    for name, values in sections.items():
        overrides[name] = {**overrides.get(name, {}), **values}
    return load_settings(None, overrides)


@pytest.fixture
async def clean_pg(pg_dsn: str) -> AsyncIterator[str]:
    """The run's database with the hj212 schema dropped before the test."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("DROP SCHEMA IF EXISTS hj212 CASCADE")
    finally:
        await conn.close()
    return pg_dsn


GatewayFactory = Callable[..., Any]
STOP_LIMIT_S = 60.0
"""Longer than any drain a test asks for: a stop that takes longer is a hang, reported
with every task's stack."""


@pytest.fixture
async def start_gateway() -> AsyncIterator[GatewayFactory]:
    """``await start_gateway(settings)`` -> a started Gateway, stopped after the test."""
    started: list[Gateway] = []

    async def _start(settings: Settings) -> Gateway:
        gw = Gateway(settings)
        await gw.start()
        started.append(gw)
        return gw

    yield _start
    for gw in started:
        try:
            async with asyncio.timeout(STOP_LIMIT_S):
                await gw.stop()
        except TimeoutError:
            stacks = io.StringIO()
            for task in asyncio.all_tasks():
                task.print_stack(limit=8, file=stacks)
            pytest.fail(f"Gateway.stop() hung for {STOP_LIMIT_S} s; tasks:\n{stacks.getvalue()}")


@pytest.fixture
def sqlite_path(tmp_path: Path) -> str:
    return str(tmp_path / "gw.sqlite3")
