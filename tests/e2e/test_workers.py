"""``serve --workers 2``: two processes on one port, one aggregated /metrics, a dead worker
restarted, SIGTERM stops everything cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import IO, Any

import asyncpg
import pytest

from tests.e2e.helpers import Device, frame, metric

pytestmark = pytest.mark.postgres


def _events(stream: IO[bytes], until: str, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Read JSON log lines until one with event ``until``; return all read."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        try:
            event = json.loads(line)
        except ValueError:
            continue
        seen.append(event)
        if event.get("event") == until:
            return seen
    raise AssertionError(f"no {until!r} in the log: {seen[-5:]}")


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def _status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def upload(n: int) -> bytes:
    mn = f"88888880000000000000D{n:03d}"
    return frame(
        f"QN=20240101120000{n:03d};ST=32;CN=2011;PW=123456;MN={mn};Flag=5;"
        f"CP=&&DataTime=20240101120000;w01018-Rtd={n}.5,w01018-Flag=N&&"
    )


async def _send_all(port: int, count: int) -> int:
    devices = [await Device.connect(port) for _ in range(count)]
    for n, dev in enumerate(devices):
        await dev.send(upload(n))
    replies = 0
    for dev in devices:
        replies += len(await dev.wait_replies(1))
        await dev.close()
    return replies


def test_two_workers_share_the_port_and_metrics(pg_clean_dsn: str) -> None:
    env = {**os.environ, "HJ212_LOG__FORMAT": "json", "HJ212_STORAGE__LINGER_MS": "20"}
    cmd = [
        sys.executable, "-m", "gateway", "serve", "--workers", "2", "--dsn", pg_clean_dsn,
        "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert proc.stderr is not None
    try:
        seen = _events(proc.stderr, "gateway listening")
        listening = seen[-1]
        port, mport = int(listening["port"]), int(listening["metrics_port"])
        pids = [e["pid"] for e in seen if e.get("event") == "worker started"]
        assert len(pids) == 2
        # Workers report their metrics ports once started; wait until both serve.
        for _ in range(100):
            if _status(mport, "/readyz") == 200:
                break
            time.sleep(0.2)
        assert asyncio.run(_send_all(port, 40)) == 40
        s = _scrape(mport)
        assert metric(s, "hj212_frames_total", cn="2011", version="2017", result="accepted") == 40
        assert metric(s, "hj212_connections_accepted_total") == 40

        os.kill(pids[0], signal.SIGKILL)
        _events(proc.stderr, "worker died; restarting")
        _events(proc.stderr, "worker started")
        for _ in range(100):
            s = _scrape(mport)
            if s.get("hj212_workers") == 2 and s.get("hj212_worker_restarts_total") == 1:
                break
            time.sleep(0.2)
        assert s["hj212_workers"] == 2
        assert s["hj212_worker_restarts_total"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        proc.stderr.close()
    assert code == 0

    async def workers_seen() -> set[int]:
        conn = await asyncpg.connect(pg_clean_dsn)
        try:
            rows = await conn.fetch("SELECT DISTINCT worker FROM hj212.frame")
        finally:
            await conn.close()
        return {r["worker"] for r in rows}

    # SO_REUSEPORT spreads 40 connections over both workers (each records its number).
    assert asyncio.run(workers_seen()) == {0, 1}


@pytest.mark.parametrize("workers", [1, 2])
def test_a_port_in_use_stops_the_start_cleanly(tmp_path: Any, workers: int) -> None:
    """The metrics port is taken: exit code 2 with one error line, and no worker left
    running behind the supervisor (it binds before it starts any)."""
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    cmd = [
        sys.executable, "-m", "gateway", "serve", "--port", "0",
        "--metrics-port", str(port), "--workers", str(workers),
        "--sqlite-path", str(tmp_path / "gw.sqlite3"), "--log-format", "json",
    ]  # fmt: skip
    env = dict(os.environ, HJ212_METRICS__HOST="127.0.0.1")
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=60, env=env, check=False)
    finally:
        taken.close()
    assert done.returncode == 2, done.stderr.decode()[-2000:]
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith(b"{")]
    errors = [e for e in events if e.get("level") == "error"]
    assert len(errors) == 1
    assert errors[0]["event"].startswith("cannot start")
    assert str(port) in errors[0]["error"]
    assert b"Traceback" not in done.stderr
