"""Device authentication: the registry and quarantine policies, per-device CRC variants,
and a password that never leaves the gateway (logs, metrics, frame_public, decode)."""

from __future__ import annotations

import asyncio
import contextlib
import io
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog

from gateway.cli import main as cli
from protocol import modbus_crc
from tests.e2e.conftest import gateway_settings
from tests.e2e.helpers import Device, frame, metric, scrape

pytestmark = pytest.mark.postgres

SECRET = "Zq7Pw9"  # the registered password; must never be printed anywhere


def upload(mn: str, pw: str, qn: str = "20240101120000000", value: str = "1.5") -> bytes:
    return frame(
        f"QN={qn};ST=32;CN=2011;PW={pw};MN={mn};Flag=5;"
        f"CP=&&DataTime=20240101120000;w01018-Rtd={value},w01018-Flag=N&&"
    )


def modbus_upload(mn: str, pw: str) -> bytes:
    seg = (
        f"QN=20240101120000000;ST=32;CN=2011;PW={pw};MN={mn};Flag=5;"
        "CP=&&DataTime=20240101120000;w01018-Rtd=2.5,w01018-Flag=N&&"
    ).encode()
    return b"##%04d" % len(seg) + seg + b"%04X\r\n" % modbus_crc(seg)


def device_cli(dsn: str, *args: str) -> int:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        return cli(["device", *args, "--dsn", dsn])


async def rows(dsn: str, sql: str, *params: Any) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *params))
    finally:
        await conn.close()


async def exchange(port: int, data: bytes, replies: int, settle: float = 0.4) -> list[bytes]:
    dev = await Device.connect(port)
    await dev.send(data)
    got = await dev.wait_replies(replies, 5.0)
    await asyncio.sleep(settle)
    got = list(dev.replies)
    await dev.close()
    return got


async def test_registry_policy(clean_pg: str, start_gateway: Any) -> None:
    gw0 = await start_gateway(gateway_settings({"dsn": clean_pg}))  # migrates the schema
    await gw0.stop()
    await asyncio.to_thread(device_cli, clean_pg, "add", "MN-A", "--password", SECRET)
    await asyncio.to_thread(device_cli, clean_pg, "add", "MN-B")  # no password on record
    await asyncio.to_thread(device_cli, clean_pg, "add", "MN-D", "--password", SECRET)
    await asyncio.to_thread(device_cli, clean_pg, "disable", "MN-D")
    gw = await start_gateway(
        gateway_settings({"dsn": clean_pg}, auth={"policy": "registry", "max_failures": 3})
    )
    # Admitted: right password; no password on record (the first one is recorded).
    assert len(await exchange(gw.port, upload("MN-A", SECRET), 1)) == 1
    assert len(await exchange(gw.port, upload("MN-B", "first1"), 1)) == 1
    # Refused: wrong password, unknown MN, disabled device. No reply, nothing stored.
    assert await exchange(gw.port, upload("MN-A", "wrong!", qn="20240101120000001"), 0) == []
    assert await exchange(gw.port, upload("MN-C", SECRET), 0) == []
    assert await exchange(gw.port, upload("MN-D", SECRET), 0) == []
    # Three failures in a row close the connection.
    dev = await Device.connect(gw.port)
    await dev.send(b"".join(upload("MN-C", SECRET, qn=f"2024010112000000{i}") for i in range(3)))
    dev.stop_reader()
    assert await asyncio.wait_for(dev.reader.read(), 5.0) == b""
    await dev.close()
    await asyncio.sleep(0.3)

    stored = await rows(clean_pg, "SELECT mn FROM hj212.reading ORDER BY mn")
    assert [r["mn"] for r in stored] == ["MN-A", "MN-B"]
    recorded = await rows(clean_pg, "SELECT password FROM hj212.device WHERE mn = 'MN-B'")
    assert recorded[0]["password"] == "first1"
    refused = await rows(
        clean_pg, "SELECT reason, count(*) AS n FROM hj212.frame WHERE NOT ok GROUP BY 1"
    )
    assert {r["reason"]: r["n"] for r in refused} == {
        "auth_bad_password": 1,
        "auth_unknown_mn": 4,
        "auth_disabled": 1,
    }
    s = await scrape(gw.metrics_port)
    assert metric(s, "hj212_auth_refused_total", reason="bad_password") == 1
    assert metric(s, "hj212_auth_refused_total", reason="unknown_mn") == 4
    assert metric(s, "hj212_auth_refused_total", reason="disabled") == 1
    assert metric(s, "hj212_auth_passwords_recorded_total") == 1
    assert metric(s, "hj212_connections_closed_total", reason="auth_failed") == 1


async def test_quarantine_then_approve(clean_pg: str, start_gateway: Any) -> None:
    gw = await start_gateway(gateway_settings({"dsn": clean_pg}, auth={"policy": "quarantine"}))
    frames = [upload("MN-Q", SECRET, qn=f"2024010112000{i:04d}", value=str(i)) for i in range(3)]
    assert len(await exchange(gw.port, b"".join(frames), 3)) == 3  # replied normally
    assert await rows(clean_pg, "SELECT * FROM hj212.reading") == []
    quarantined = await rows(clean_pg, "SELECT mn FROM hj212.quarantine")
    assert [r["mn"] for r in quarantined] == ["MN-Q"] * 3
    s = await scrape(gw.metrics_port)
    assert metric(s, "hj212_auth_quarantined_total") == 3

    assert await asyncio.to_thread(device_cli, clean_pg, "approve", "MN-Q", "--json") == 0
    readings = await rows(clean_pg, "SELECT rtd, revision FROM hj212.reading WHERE mn = 'MN-Q'")
    # Three versions of one key, approved in receive order: the last value, two revisions.
    assert [(r["rtd"], r["revision"]) for r in readings] == [(2.0, 2)]
    assert await rows(clean_pg, "SELECT * FROM hj212.quarantine") == []
    approved = await rows(
        clean_pg, "SELECT count(*) AS n FROM hj212.frame WHERE reason = 'approved'"
    )
    assert approved[0]["n"] == 3


async def test_crc_variant_allowed_per_device(clean_pg: str, start_gateway: Any) -> None:
    gw0 = await start_gateway(gateway_settings({"dsn": clean_pg}))
    await gw0.stop()
    await asyncio.to_thread(device_cli, clean_pg, "add", "MN-M", "--crc-variant", "modbus")
    gw = await start_gateway(gateway_settings({"dsn": clean_pg}))
    assert len(await exchange(gw.port, modbus_upload("MN-M", SECRET), 1)) == 1
    assert await exchange(gw.port, modbus_upload("MN-N", SECRET), 0) == []
    s = await scrape(gw.metrics_port)
    assert metric(s, "hj212_rejects_total", reason="crc_mismatch") == 1
    assert metric(s, "hj212_crc_variant_total", crc_variant="modbus") == 2
    stored = await rows(clean_pg, "SELECT mn FROM hj212.reading")
    assert [r["mn"] for r in stored] == ["MN-M"]


async def test_password_never_leaves_the_gateway(
    clean_pg: str, start_gateway: Any, tmp_path: Path
) -> None:
    with structlog.testing.capture_logs() as logs:
        gw = await start_gateway(gateway_settings({"dsn": clean_pg}, log={"level": "debug"}))
        good = upload("MN-P", SECRET)
        bad = good[:-6] + b"0000\r\n"
        assert len(await exchange(gw.port, good + bad + b"junk PW=" + SECRET.encode(), 1)) == 1
        await asyncio.sleep(0.2)
        text = "\n".join(f"{k}={v}" for e in logs for k, v in e.items())
    assert {"gateway listening", "connection closed"} <= {e["event"] for e in logs}
    assert SECRET not in text
    s = await scrape(gw.metrics_port)
    assert all(SECRET not in key for key in s)
    public = await rows(clean_pg, "SELECT * FROM hj212.frame_public")
    assert len(public) == 2
    assert SECRET not in repr([dict(r) for r in public])
    capture = tmp_path / "capture.bin"
    capture.write_bytes(good + bad)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli(["decode", str(capture), "--raw"]) == 1  # one frame rejected
    assert "MN-P" in out.getvalue()
    assert SECRET not in out.getvalue()
    printed = await asyncio.to_thread(
        _captured, ["device", "add", "MN-P", "--password", SECRET, "--json", "--dsn", clean_pg]
    )
    assert '"has_password": true' in printed
    assert SECRET not in printed


def _captured(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli(argv) == 0
    return out.getvalue()
