"""A simulated fleet against the real gateway (in this process, SQLite store).

Every expected reply must arrive, and the SQLite file must hold exactly the distinct
rows the simulator says it sent: resends and quirky frames included, nothing lost and
nothing doubled.
"""

from __future__ import annotations

import calendar
import sqlite3
from pathlib import Path

from config import load_settings
from gateway.app import Gateway
from gateway.sim import FleetConfig, RunConfig, make_fleet, run_in_loop
from gateway.sim.fleet import QUIRKS_2005

# Five simulated minutes before midnight (local wall clock): the window crosses an hour
# and a day boundary, so 2061 and 2031 uploads are sent too.
START = calendar.timegm((2024, 12, 31, 23, 55, 0))
# Seed 5 with these shares gives 20 units of all three profiles that show every quirk.
FLEET = FleetConfig(
    devices=20,
    seed=5,
    quirky_share=0.6,
    version_mix={"2017": 0.5, "2005": 0.25, "2025": 0.25},
)


def _count(path: Path, sql: str) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute(sql).fetchone()[0])
    finally:
        db.close()


async def test_every_reply_comes_and_sqlite_holds_exactly_the_distinct_rows(
    tmp_path: Path,
) -> None:
    assert {s.quirk for s in make_fleet(FLEET) if s.quirk} == set(QUIRKS_2005)
    db = tmp_path / "t.sqlite3"
    settings = load_settings(
        None,
        {
            "listen": {"port": 0, "host": "127.0.0.1"},
            "metrics": {"port": 0, "host": "127.0.0.1"},
            "storage": {"sqlite_path": str(db)},
        },
    )
    gateway = Gateway(settings)
    await gateway.start()
    try:
        cfg = RunConfig(
            host="127.0.0.1",
            port=gateway.port,
            fleet=FLEET,
            sim_start=START,
            duration_s=3.0,
            speed=160.0,  # 8 simulated minutes
            over_time_s=5.0,
        )
        stats = await run_in_loop(cfg)
    finally:
        await gateway.stop()

    assert stats.errors == []
    assert stats.ok
    assert stats.connected_at_end == 20
    assert stats.expected_replies > 0
    assert stats.replied == stats.expected_replies
    assert {2011, 2051, 2061, 3020, 9015} <= set(stats.frames_by_cn)
    assert _count(db, "SELECT count(*) FROM reading") == stats.rows_reading
    assert _count(db, "SELECT count(*) FROM info") == stats.rows_info
    # Every transmission was archived, resends included.
    assert _count(db, "SELECT count(*) FROM frame WHERE ok") == stats.frames_sent + stats.resends


async def test_silent_reconnect_storm_is_taken_over_by_the_gateway(tmp_path: Path) -> None:
    """Units whose old connections stay open and silent (dead modems) redial: the gateway
    hands each MN to the new connection and closes the old one (field-quirks Q21)."""
    db = tmp_path / "t.sqlite3"
    settings = load_settings(
        None,
        {
            "listen": {"port": 0, "host": "127.0.0.1"},
            "metrics": {"port": 0, "host": "127.0.0.1"},
            "storage": {"sqlite_path": str(db)},
        },
    )
    gateway = Gateway(settings)
    await gateway.start()
    try:
        cfg = RunConfig(
            host="127.0.0.1",
            port=gateway.port,
            fleet=FleetConfig(devices=10, seed=7, quirky_share=0.0),
            sim_start=START,
            mode="reconnect-storm",
            storm_style="silent",
            storm_after_s=0.5,
            duration_s=2.0,
            speed=60.0,
            over_time_s=5.0,
        )
        stats = await run_in_loop(cfg)
    finally:
        await gateway.stop()

    assert stats.errors == []
    assert stats.ok
    assert stats.storm_reconnected == 10
    assert stats.storm_orphans_closed == 10
    assert stats.storm_orphans_left == 0
    assert _count(db, "SELECT count(*) FROM reading") == stats.rows_reading
