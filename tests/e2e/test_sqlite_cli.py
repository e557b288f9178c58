"""The README's run command with the embedded SQLite store, driven as a newcomer would:
start ``hj212-gateway serve``, replay a capture with ``hj212-gateway replay``, stop it with
SIGTERM, and find the rows in the SQLite file."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.helpers import load_vectors

GATEWAY = [sys.executable, "-m", "gateway"]
# Upload vectors that ask for a reply (1-based line numbers), and their reading rows.
UPLOADS = [1, 3, 4, 5]


def _wait_for_listening(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> dict[str, object]:
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                raise AssertionError(f"gateway exited with {proc.returncode}")
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "gateway listening":
            return event
    raise AssertionError("gateway did not report listening")


def test_serve_replay_sqlite(tmp_path: Path) -> None:
    vectors = load_vectors()
    capture = tmp_path / "capture.txt"
    capture.write_bytes(b"".join(vectors[n - 1]["wire"].encode() for n in UPLOADS))
    env = {**os.environ, "HJ212_LOG__FORMAT": "json"}
    proc = subprocess.Popen(
        [*GATEWAY, "serve", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    try:
        event = _wait_for_listening(proc)
        assert event["store"] == "sqlite"
        replay = subprocess.run(
            [*GATEWAY, "replay", str(capture), "--to", f"127.0.0.1:{event['port']}", "--json"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert replay.returncode == 0, replay.stderr
        summary = json.loads(replay.stdout)
        assert summary["sent"] == len(UPLOADS)
        assert summary["replied"] == summary["expected_replies"] == len(UPLOADS)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        assert proc.stderr is not None
        proc.stderr.close()
    assert code == 0
    db = sqlite3.connect(tmp_path / "hj212.sqlite3")
    try:
        readings = db.execute("SELECT mn, cn, code FROM reading ORDER BY mn, cn, code").fetchall()
        frames = db.execute("SELECT count(*) FROM frame").fetchone()[0]
    finally:
        db.close()
    expected = sorted(
        (vectors[n - 1]["header"]["MN"], int(vectors[n - 1]["header"]["CN"]), code)
        for n in UPLOADS
        for code in vectors[n - 1]["data"]
    )
    assert readings == expected
    assert frames == len(UPLOADS)
