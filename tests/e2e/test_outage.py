"""The database goes away mid-run: reading pauses, nothing is replied to that is not
committed, and after recovery every value that was replied to is in the database.

Uses a throwaway PostgreSQL cluster of its own (never the shared one), stopped with
``pg_ctl -m immediate`` while a device keeps sending.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from typing import Any

import asyncpg
import pytest

from tests.e2e.conftest import gateway_settings
from tests.e2e.helpers import Device, frame, metric, scrape

pytestmark = pytest.mark.postgres

MN = "88888880000000000000B001"
CODES = ("w00000", "w01001", "w01018", "w21003", "w21011", "w21001")


def upload(i: int) -> tuple[str, bytes]:
    """Upload number i: its own QN and DataTime (30 s apart), six values."""
    minute, second = divmod(i * 30, 60)
    hour, minute = divmod(minute, 60)
    stamp = f"20240315{hour:02d}{minute:02d}{second:02d}"
    qn = f"{stamp}{i % 1000:03d}"
    items = ";".join(f"{c}-Rtd={i}.{k},{c}-Flag=N" for k, c in enumerate(CODES))
    seg = f"QN={qn};ST=32;CN=2011;PW=123456;MN={MN};Flag=5;CP=&&DataTime={stamp};{items}&&"
    return qn, frame(seg)


def replied_qns(replies: list[bytes]) -> set[str]:
    return {r.split(b"QN=", 1)[1][:17].decode() for r in replies}


def readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


async def stored_times(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT to_char(data_time AT TIME ZONE 'Asia/Shanghai', 'YYYYMMDDHH24MISS') AS t,"
            " count(*) AS n FROM hj212.reading WHERE mn = $1 GROUP BY 1",
            MN,
        )
    finally:
        await conn.close()
    return {r["t"]: r["n"] for r in rows}


async def test_database_outage_pauses_and_loses_nothing(
    throwaway_cluster: Any, start_gateway: Any
) -> None:
    cluster = throwaway_cluster
    settings = gateway_settings(
        {
            "dsn": cluster.dsn,
            "queue_rows": 1_000,  # small, so the outage reaches high water (700 rows)
            "batch_rows": 100,
            "retry_initial_ms": 50,
            "retry_max_ms": 300,
        }
    )
    gw = await start_gateway(settings)
    dev = await Device.connect(gw.port)
    sent: dict[str, bytes] = {}

    # Before the outage: three uploads, three replies.
    for i in range(3):
        qn, data = upload(i)
        sent[qn] = data
        await dev.send(data)
    assert len(await dev.wait_replies(3)) == 3

    await asyncio.to_thread(cluster.stop)
    # During the outage: 150 uploads of 7 rows each (1,050 rows > the 1,000-row queue).
    for i in range(3, 153):
        qn, data = upload(i)
        sent[qn] = data
        await dev.send(data)
    await asyncio.sleep(1.5)
    during = list(dev.replies)
    assert len(during) == 3, "a reply went out for data that was not committed"
    samples = await scrape(gw.metrics_port)
    assert metric(samples, "hj212_connections_paused") == 1
    assert metric(samples, "hj212_writer_retries_total") >= 1
    assert await asyncio.to_thread(readyz, gw.metrics_port) == 503

    await asyncio.to_thread(cluster.start)
    # The device resends whatever was not answered, as a DAU does after its timeout.
    for _ in range(20):
        await asyncio.sleep(1.0)
        missing = [qn for qn in sent if qn not in replied_qns(dev.replies)]
        if not missing:
            break
        for qn in missing:
            await dev.send(sent[qn])
    assert not [qn for qn in sent if qn not in replied_qns(dev.replies)]

    # Every replied-to upload has all of its values in the database.
    times = await stored_times(cluster.dsn)
    assert len(times) == len(sent)
    assert set(times.values()) == {len(CODES)}
    assert await asyncio.to_thread(readyz, gw.metrics_port) == 200
    await dev.close()
