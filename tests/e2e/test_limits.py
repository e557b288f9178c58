"""Connection bounds and session rules, against a real gateway on the SQLite store.

Each bound is set small so the test reaches it quickly: total connections, idle timeout,
partial-frame timeout, rejected frames in a row, garbage without a frame, the archive
rate of rejected frames; plus the MN takeover rule (field-quirks Q21) and the shutdown
drain (rows queued at SIGTERM are flushed and replied to before the connections close).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
from typing import Any

from tests.e2e.conftest import gateway_settings
from tests.e2e.helpers import Device, frame, metric, scrape


def upload(mn: str, value: str = "1.0", qn: str = "20240101120000000") -> bytes:
    return frame(
        f"QN={qn};ST=32;CN=2011;PW=123456;MN={mn};Flag=5;"
        f"CP=&&DataTime=20240101120000;w01018-Rtd={value},w01018-Flag=N&&"
    )


async def closed(dev: Device, wait_s: float = 5.0) -> bool:
    """True once the gateway has closed the connection (EOF or reset)."""
    try:
        data = await asyncio.wait_for(dev.reader.read(), wait_s)
    except ConnectionError:
        return True
    except TimeoutError:
        return False
    return data == b"" or dev.reader.at_eof()


async def test_max_connections_refuses_and_counts(sqlite_path: str, start_gateway: Any) -> None:
    gw = await start_gateway(
        gateway_settings({"sqlite_path": sqlite_path}, listen={"max_connections": 2})
    )
    a, b = await Device.connect(gw.port), await Device.connect(gw.port)
    await asyncio.sleep(0.1)
    c = await Device.connect(gw.port)
    c.stop_reader()
    assert await closed(c)
    await c.close()
    s = await scrape(gw.metrics_port)
    assert metric(s, "hj212_connections_refused_total", reason="max_connections") == 1
    assert metric(s, "hj212_connections_open") == 2
    for d in (a, b):
        await d.close()


async def test_idle_and_partial_frame_timeouts(sqlite_path: str, start_gateway: Any) -> None:
    gw = await start_gateway(
        gateway_settings(
            {"sqlite_path": sqlite_path},
            listen={"idle_timeout_s": 1.5, "partial_frame_timeout_s": 1.0},
        )
    )
    idle = await Device.connect(gw.port)
    idle.stop_reader()
    half = await Device.connect(gw.port)
    dribble = await Device.connect(gw.port)
    # Half a frame and then nothing; and a frame a byte at a time, too slowly: both are
    # dropped (truncated) once the frame is 1 s old, and their connections closed. The
    # silent connection is closed after 1.5 s.
    frame_bytes = upload("88888880000000000000C001")
    await half.send(frame_bytes[:40])
    half.stop_reader()
    dribble.stop_reader()

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError, OSError):
            for b in frame_bytes[:30]:
                await dribble.send(bytes([b]))
                await asyncio.sleep(0.2)

    task = asyncio.create_task(trickle())
    assert await closed(idle, 6.0)
    assert await closed(half, 6.0)
    assert await closed(dribble, 6.0)
    await task
    for dev in (idle, half, dribble):
        await dev.close()
    s = await scrape(gw.metrics_port)
    assert metric(s, "hj212_connections_closed_total", reason="idle_timeout") == 1
    assert metric(s, "hj212_connections_closed_total", reason="partial_timeout") == 2
    assert metric(s, "hj212_rejects_total", reason="truncated") == 2


async def test_frames_without_a_tail_are_not_dropped_as_stale_partials(
    sqlite_path: str, start_gateway: Any
) -> None:
    """A device whose frames lack CR LF always has its newest frame pending until the next
    one's ``##``: the partial-frame clock restarts at each completed frame."""
    gw = await start_gateway(
        gateway_settings({"sqlite_path": sqlite_path}, listen={"partial_frame_timeout_s": 1.0})
    )
    dev = await Device.connect(gw.port)
    mn = "88888880000000000000C009"
    frames = [upload(mn, str(i), f"202401011200{i:02d}000")[:-2] for i in range(6)]
    for data in frames:
        await dev.send(data)  # no tail: each completes when the next begins
        await asyncio.sleep(0.4)  # 2.4 s in all: well past the 1 s partial timeout
    assert len(await dev.wait_replies(5)) == 5
    s = await scrape(gw.metrics_port)
    assert metric(s, "hj212_quirks_total", quirk="tail_missing") == 5
    assert metric(s, "hj212_rejects_total", reason="truncated") == 0
    await dev.close()


async def test_a_paused_connection_is_not_silent(sqlite_path: str, start_gateway: Any) -> None:
    """The rate limit holds a connection's next bytes unread for longer than the idle and
    partial-frame timeouts: the pause is ours, so the connection is kept and read on."""
    gw = await start_gateway(
        gateway_settings(
            {"sqlite_path": sqlite_path},
            listen={
                "max_frames_per_s": 0.5,
                "frame_burst": 1,
                "idle_timeout_s": 1.0,
                "partial_frame_timeout_s": 1.0,
            },
        )
    )
    dev = await Device.connect(gw.port)
    mn = "88888880000000000000C010"
    frames = [upload(mn, str(i), f"202401011200{i:02d}000") for i in range(4)]
    await dev.send(frames[0] + frames[1])  # two at once: reading pauses for 2 s
    await asyncio.sleep(0.1)
    await dev.send(frames[2] + frames[3] + frames[0][:20])  # unread for ~2 s, then read
    assert len(await dev.wait_replies(4, timeout=30)) == 4
    s = await scrape(gw.metrics_port)
    assert metric(s, "hj212_connections_throttled_total") >= 2
    assert metric(s, "hj212_connections_closed_total", reason="idle_timeout") == 0
    assert metric(s, "hj212_connections_closed_total", reason="partial_timeout") == 0
    await dev.close()


async def test_rejects_in_a_row_close_and_archive_rate(
    sqlite_path: str, start_gateway: Any
) -> None:
    gw = await start_gateway(
        gateway_settings(
            {"sqlite_path": sqlite_path, "archive_rejected_per_minute": 3},
            listen={"max_rejects_before_close": 5},
        )
    )
    dev = await Device.connect(gw.port)
    good = upload("88888880000000000000C002")
    bad = good[:-6] + b"0000\r\n"  # CRC field wrong
    await dev.send(good + bad * 6)
    dev.stop_reader()
    assert await closed(dev)
    await dev.close()
    await asyncio.sleep(0.5)
    s = await scrape(gw.metrics_port)
    assert metric(s, "hj212_connections_closed_total", reason="too_many_rejects") == 1
    assert metric(s, "hj212_rejects_total", reason="crc_mismatch") == 5
    # 3 archived (the per-minute budget), 2 only counted.
    assert metric(s, "hj212_rejected_frames_not_archived_total") == 2
    db = sqlite3.connect(sqlite_path)
    try:
        oks = db.execute("SELECT ok, count(*) FROM frame GROUP BY ok ORDER BY ok").fetchall()
    finally:
        db.close()
    assert oks == [(0, 3), (1, 1)]


async def test_garbage_without_frames_closes(sqlite_path: str, start_gateway: Any) -> None:
    gw = await start_gateway(
        gateway_settings({"sqlite_path": sqlite_path}, listen={"garbage_limit_bytes": 4096})
    )
    dev = await Device.connect(gw.port)
    dev.stop_reader()
    await dev.send(b"\x00\x01\x00\x00\x00\x06\x01\x03" * 1024)  # Modbus-TCP probes, 8 KiB
    assert await closed(dev)
    await dev.close()
    s = await scrape(gw.metrics_port)
    assert metric(s, "hj212_connections_closed_total", reason="garbage") == 1
    assert metric(s, "hj212_resync_bytes_total") >= 4096


async def test_newer_connection_takes_over_the_mn(sqlite_path: str, start_gateway: Any) -> None:
    gw = await start_gateway(gateway_settings({"sqlite_path": sqlite_path}))
    mn = "88888880000000000000C003"
    old = await Device.connect(gw.port)
    await old.send(upload(mn))
    await old.wait_replies(1)
    new = await Device.connect(gw.port)
    await new.send(upload(mn, qn="20240101120030000"))
    await new.wait_replies(1)
    old.stop_reader()
    assert await closed(old)  # left owning no MN: closed as superseded
    await old.close()
    await asyncio.sleep(0.1)
    assert gw.hub.sessions[mn].peer != "?"
    assert len(gw.hub.sessions) == 1
    s = await scrape(gw.metrics_port)
    assert metric(s, "hj212_session_takeovers_total") == 1
    assert metric(s, "hj212_connections_closed_total", reason="superseded") == 1
    # The old connection's cleanup did not remove the newer mapping.
    assert metric(s, "hj212_sessions") == 1
    await new.send(upload(mn, "2.0", qn="20240101120100000"))
    assert len(await new.wait_replies(2)) == 2
    await new.close()


async def test_shutdown_flushes_queued_rows_and_replies(
    sqlite_path: str, start_gateway: Any
) -> None:
    # A long linger keeps the rows queued until stop() drains them.
    gw = await start_gateway(gateway_settings({"sqlite_path": sqlite_path, "linger_ms": 5000}))
    dev = await Device.connect(gw.port)
    frames = [upload("88888880000000000000C004", str(i), f"2024010112000{i:04d}") for i in range(5)]
    await dev.send(b"".join(frames))
    await asyncio.sleep(0.3)
    assert dev.replies == []  # nothing committed yet, so nothing replied
    await gw.stop()
    assert len(await dev.wait_replies(5)) == 5
    db = sqlite3.connect(sqlite_path)
    try:
        frames_stored = db.execute("SELECT count(*) FROM frame").fetchone()[0]
    finally:
        db.close()
    assert frames_stored == 5
    await dev.close()


async def test_frame_rate_limit_delays_without_losing(sqlite_path: str, start_gateway: Any) -> None:
    """A peer over listen.max_frames_per_s has its reading paused, not its frames dropped."""
    gw = await start_gateway(
        gateway_settings(
            {"sqlite_path": sqlite_path},
            listen={"max_frames_per_s": 20.0, "frame_burst": 10},
        )
    )
    dev = await Device.connect(gw.port)
    mn = "88888880000000000000C005"
    frames = [upload(mn, str(i), f"202401011200{i:02d}000") for i in range(50)]
    for k in range(0, 50, 10):  # five writes of ten: the second already overdraws
        await dev.send(b"".join(frames[k : k + 10]))
        await asyncio.sleep(0.1)
    s = await scrape(gw.metrics_port)
    assert metric(s, "hj212_connections_throttled_total") >= 1
    assert len(dev.replies) < 50  # still held back: 50 frames take 2 s at 20/s after 10
    assert len(await dev.wait_replies(50, timeout=30)) == 50
    s = await scrape(gw.metrics_port)
    assert metric(s, "hj212_frames_total", cn="2011", version="2017", result="accepted") == 50
    await dev.close()


async def test_peer_that_never_reads_is_disconnected(sqlite_path: str, start_gateway: Any) -> None:
    gw = await start_gateway(
        gateway_settings(
            {"sqlite_path": sqlite_path},
            listen={"max_write_buffer_bytes": 1024, "max_frames_per_s": 0},
        )
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", gw.port))
    mn = "88888880000000000000C006"
    try:
        async with asyncio.timeout(60):
            i = 0
            while True:  # replies pile up unread until the gateway gives up on the peer
                batch = b"".join(upload(mn, "1", f"{20240101000000000 + i + k}") for k in range(50))
                i += 50
                try:
                    await loop.sock_sendall(sock, batch)
                except (ConnectionError, OSError):
                    break
                s = await scrape(gw.metrics_port)
                if metric(s, "hj212_connections_closed_total", reason="write_stalled") == 1:
                    break
    finally:
        sock.close()
    s = await scrape(gw.metrics_port)
    assert metric(s, "hj212_connections_closed_total", reason="write_stalled") == 1


async def test_one_refused_presence_row_costs_only_itself(
    sqlite_path: str, start_gateway: Any
) -> None:
    """The database refuses one device's presence row: the others are written anyway."""
    from storage.base import StorageError

    gw = await start_gateway(gateway_settings({"sqlite_path": sqlite_path}))
    bad, good = "88888880000000000000C007", "88888880000000000000C008"
    real = gw.store.write_presence

    async def picky(rows: Any) -> None:
        if any(r.mn == bad for r in rows):
            raise StorageError("refused", retriable=False, kind="data")
        await real(rows)

    gw.store.write_presence = picky
    dev = await Device.connect(gw.port)
    await dev.send(upload(bad) + upload(good, qn="20240101120000001"))
    await dev.wait_replies(2)
    db = sqlite3.connect(sqlite_path)
    try:
        for _ in range(100):
            rows = db.execute("SELECT mn, frames FROM presence ORDER BY mn").fetchall()
            if rows:
                break
            await asyncio.sleep(0.05)
    finally:
        db.close()
    assert rows == [(good, 1)]
    await dev.close()
