"""Forwarding to upstream platforms, end to end: devices -> gateway -> two fake platforms.

The fake platforms are asyncio servers on loopback that record every frame they read (per
connection, in order) and answer a frame that asks for a reply with a 9014 built here,
independently of protocol/. One of them drops every connection and refuses new ones for a
while in the middle of the run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest

from config import load_settings
from config.loader import ConfigError
from gateway.app import Gateway
from gateway.forward import ForwardError
from tests.e2e.conftest import gateway_settings
from tests.e2e.helpers import Device, frame, metric, naive_crc, scrape

SHANGHAI = dt.timezone(dt.timedelta(hours=8))
WAIT_S = 30.0
"""Upper bound on waiting for delivery (never reached when things work; not an assertion
on speed)."""
FAST_RETRIES = {"retry_initial_s": 0.05, "retry_max_s": 0.3, "stats_interval_s": 0.2}


# -- a fake upstream platform ------------------------------------------------------------


def header_of(line: bytes) -> dict[str, str]:
    """Header fields of one frame (checked by length and CRC first)."""
    assert line[:2] == b"##", line
    assert line[-2:] == b"\r\n", line
    size = int(line[2:6])
    segment = line[6 : 6 + size]
    assert len(line) == 6 + size + 6, "length field does not match"
    assert int(line[6 + size : 10 + size], 16) == naive_crc(segment), "CRC does not match"
    head = segment.decode().split(";CP=", 1)[0]
    return dict(item.split("=", 1) for item in head.split(";"))


class _PlatformConn(asyncio.Protocol):
    def __init__(self, platform: FakePlatform) -> None:
        self.platform = platform
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.index = 0
        self.lost = False
        self.pending = 0
        """Frames read but not yet committed (``reply_delay_s``)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.platform.conns.add(self)
        self.platform.accepted += 1
        self.index = self.platform.accepted

    def connection_lost(self, exc: Exception | None) -> None:
        self.platform.conns.discard(self)
        self.lost = True  # frames not yet committed are not stored: no 9014, sent again

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n" in self.buf:
            line, self.buf = self.buf.split(b"\r\n", 1)
            line += b"\r\n"
            delay = self.platform.reply_delay_s
            if delay:
                self.pending += 1
                asyncio.get_running_loop().call_later(delay, self.commit, line)
            else:
                self.commit(line)

    def commit(self, line: bytes) -> None:
        """Store the frame and answer it in one step, as a platform with durable replies
        does: a frame whose connection drops before this is not stored."""
        if self.platform.reply_delay_s:
            self.pending -= 1
        if self.lost:
            return
        head = header_of(line)
        self.platform.frames.append((self.index, head["MN"], line))
        if int(head.get("Flag", "0")) & 1 and self.platform.answer:
            reply = (
                f"QN={head['QN']};ST=91;CN=9014;PW={head['PW']};MN={head['MN']};"
                f"Flag={int(head['Flag']) & ~3};CP=&&&&"
            )
            assert self.transport is not None
            self.transport.write(frame(reply))


@dataclass
class FakePlatform:
    """An upstream HJ 212 platform: records frames, answers 9014, can go away."""

    frames: list[tuple[int, str, bytes]] = field(default_factory=list)
    """(connection number, MN, frame bytes) in the order read."""
    conns: set[_PlatformConn] = field(default_factory=set)
    accepted: int = 0
    answer: bool = True
    reply_delay_s: float = 0.0
    """Frames are stored and answered this long after they are read (0: at once)."""
    dropped_in_flight: int = 0
    """Frames read but not committed when an outage dropped their connection."""
    port: int = 0
    server: asyncio.Server | None = None

    async def listen(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _PlatformConn(self), "127.0.0.1", self.port, reuse_address=True
        )
        self.port = int(self.server.sockets[0].getsockname()[1])

    async def outage(self) -> None:
        """Stop listening (new connections are refused) and drop every connection."""
        assert self.server is not None
        self.server.close()
        for conn in list(self.conns):
            # Lost from now: connection_lost comes a loop iteration later, and a delayed
            # commit must not store a frame in between (it was never answered).
            conn.lost = True
            self.dropped_in_flight += conn.pending
            if conn.transport is not None:
                conn.transport.abort()
        await self.server.wait_closed()
        self.server = None

    async def close(self) -> None:
        if self.server is not None:
            await self.outage()

    def by_mn(self) -> dict[str, list[bytes]]:
        out: dict[str, list[bytes]] = {}
        for _, mn, line in self.frames:
            out.setdefault(mn, []).append(line)
        return out


@pytest.fixture
async def platforms() -> AsyncIterator[tuple[FakePlatform, FakePlatform]]:
    a, b = FakePlatform(), FakePlatform()
    await a.listen()
    await b.listen()
    yield a, b
    await a.close()
    await b.close()


# -- devices -----------------------------------------------------------------------------


def upload(mn: str, i: int, base: dt.datetime, *, flag: int = 5, pw: str = "123456") -> bytes:
    """Upload number ``i`` of ``mn``: a real-time 2011 one second after the previous one
    (recent: no clock-skew command goes back to the device)."""
    stamp = (base + dt.timedelta(seconds=i)).strftime("%Y%m%d%H%M%S")
    qn = f"{stamp}{i % 1000:03d}"
    cp = f"DataTime={stamp};w01018-Rtd={i}.30,w01018-Flag=N;w21003-Rtd=1.{i:03d},w21003-Flag=N"
    return frame(f"QN={qn};ST=32;CN=2011;PW={pw};MN={mn};Flag={flag};CP=&&{cp}&&")


def recent_base(frames: int) -> dt.datetime:
    return dt.datetime.now(SHANGHAI).replace(microsecond=0) - dt.timedelta(seconds=frames)


async def wait_for(predicate: Any, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"not within {WAIT_S} s: {what}")
        await asyncio.sleep(0.05)


async def outbox_rows(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(
            await conn.fetch(
                "SELECT upstream, mn, outcome, attempts, confirmed_at IS NOT NULL AS confirmed, "
                "raw IS NULL AS dropped FROM hj212.forward_outbox ORDER BY id"
            )
        )
    finally:
        await conn.close()


# -- tests -------------------------------------------------------------------------------


async def test_two_upstreams_one_outage_every_frame_once_in_order(
    clean_pg: str, start_gateway: Any, platforms: tuple[FakePlatform, FakePlatform]
) -> None:
    """Platform ``city`` gets one connection per device; ``province`` one shared connection,
    and drops it and refuses connections for a while mid-run. Both end with every frame,
    byte for byte, in each device's order, none twice, every one confirmed by its 9014."""
    city, province = platforms
    province.reply_delay_s = 0.01  # frames are in flight when it drops its connection
    devices_n, frames_n = 12, 24
    gw = await start_gateway(
        gateway_settings(
            {"dsn": clean_pg},
            forward={
                **FAST_RETRIES,
                "shared_window": 4,
                "memory_frames": 100,  # the backlog is read from the outbox in pages
                "load_frames": 7,
                "upstreams": [
                    {"name": "city", "host": "127.0.0.1", "port": city.port},
                    {"name": "province", "host": "127.0.0.1", "port": province.port,
                     "mode": "shared"},
                ],
            },
        )
    )  # fmt: skip
    mns = [f"88888880000000000000E{n:03d}" for n in range(devices_n)]
    base = recent_base(frames_n)
    sent: dict[str, list[bytes]] = {
        mn: [upload(mn, i, base) for i in range(frames_n)] for mn in mns
    }
    devices = [await Device.connect(gw.port) for _ in mns]

    async def run(dev: Device, frames: list[bytes]) -> None:
        for i, data in enumerate(frames):
            await dev.send(data)
            if i == 5:
                await dev.send(data)  # a resend of the same frame: stored, forwarded once
            await asyncio.sleep(0.04)

    senders = [asyncio.create_task(run(d, sent[mn])) for d, mn in zip(devices, mns, strict=True)]
    await wait_for(lambda: len(province.frames) >= devices_n * 4, "province receiving")
    await province.outage()
    dropped_at = len(province.frames)
    await asyncio.sleep(0.6)  # refusing; the devices go on sending
    assert len(province.frames) == dropped_at
    await province.listen()
    await asyncio.gather(*senders)

    total = devices_n * frames_n
    await wait_for(lambda: len(city.frames) >= total, "all frames at city")
    await wait_for(lambda: len(province.frames) >= total, "all frames at province")
    for platform in (city, province):
        assert platform.by_mn() == sent  # byte-identical, in order per device, none twice
    # Per device: one connection per device at city, and all on one connection (per
    # connection opened) at province.
    per_conn: dict[int, set[str]] = {}
    for conn, mn, _ in city.frames:
        per_conn.setdefault(conn, set()).add(mn)
    assert all(len(m) == 1 for m in per_conn.values())
    assert province.accepted >= 2  # it reconnected after the outage

    # Every outbox row settled by the upstream's 9014 (the flush lags by a moment).
    async def all_confirmed() -> bool:
        rows = await outbox_rows(clean_pg)
        return len(rows) == 2 * total and all(r["confirmed"] for r in rows)

    for _ in range(int(WAIT_S / 0.1)):
        if await all_confirmed():
            break
        await asyncio.sleep(0.1)
    rows = await outbox_rows(clean_pg)
    assert len(rows) == 2 * total
    assert {(r["outcome"], r["confirmed"], r["dropped"]) for r in rows} == {("9014", True, True)}

    samples = await scrape(gw.metrics_port)
    for name in ("city", "province"):
        assert metric(samples, "hj212_forward_confirmed_total", upstream=name, by="9014") == total
        assert metric(samples, "hj212_forward_queued_total", upstream=name) == total
        assert metric(samples, "hj212_forward_given_up_total", upstream=name,
                      reason="unanswered") == 0  # fmt: skip
    assert metric(samples, "hj212_forward_connect_failures_total", upstream="province") >= 1
    assert metric(samples, "hj212_forward_lag_seconds", upstream="province") == 0
    sent_total = metric(samples, "hj212_forward_sent_total", upstream="province")
    retries = metric(samples, "hj212_forward_retries_total", upstream="province")
    # The frames in flight at the drop (read, never committed nor answered) went again.
    assert retries >= province.dropped_in_flight
    assert sent_total == total + retries
    for dev in devices:
        await dev.close()


async def test_upstream_down_at_start_gets_the_backlog_in_order(
    sqlite_path: str, tmp_path: Any, start_gateway: Any
) -> None:
    """An upstream that is not there yet: frames wait in the outbox (SQLite store), the
    lag grows, and when it comes up the backlog goes in order; frames that ask for no
    reply count as delivered once written."""
    platform = FakePlatform()
    await platform.listen()
    port = platform.port
    await platform.close()  # the port is known, nothing listens there
    gw = await start_gateway(
        gateway_settings(
            {"sqlite_path": sqlite_path, "spool_dir": str(tmp_path / "spool")},
            forward={**FAST_RETRIES, "upstreams": [
                {"name": "prov", "host": "127.0.0.1", "port": port, "mode": "shared"}]},
        )
    )  # fmt: skip
    mn = "88888880000000000000E100"
    base = recent_base(20)
    frames = [upload(mn, i, base, flag=4 if i % 2 else 5) for i in range(20)]
    dev = await Device.connect(gw.port)
    for data in frames:
        await dev.send(data)
    await dev.wait_replies(10)

    async def lag() -> float:
        return metric(await scrape(gw.metrics_port), "hj212_forward_lag_seconds", upstream="prov")

    for _ in range(100):
        if await lag() > 0:
            break
        await asyncio.sleep(0.05)
    assert await lag() > 0
    platform.port = port
    await platform.listen()
    try:
        await wait_for(lambda: len(platform.frames) >= len(frames), "the backlog")
        assert platform.by_mn() == {mn: frames}
        samples = await scrape(gw.metrics_port)
        assert metric(samples, "hj212_forward_confirmed_total", upstream="prov", by="9014") == 10
        assert metric(samples, "hj212_forward_confirmed_total", upstream="prov", by="write") == 10
    finally:
        await dev.close()
        await platform.close()


async def test_rewrites_are_rebuilt_and_checked(
    sqlite_path: str, tmp_path: Any, start_gateway: Any
) -> None:
    """A platform with its own password for one device and 2025 version bits: the header
    is rebuilt (length and CRC valid), the data area is byte for byte the device's, and
    the 9014 for the rewritten frame confirms it."""
    platform = FakePlatform()
    await platform.listen()
    mn, other = "88888880000000000000E200", "88888880000000000000E201"
    gw = await start_gateway(
        gateway_settings(
            {"sqlite_path": sqlite_path, "spool_dir": str(tmp_path / "spool")},
            forward={**FAST_RETRIES, "upstreams": [{
                "name": "prov", "host": "127.0.0.1", "port": platform.port,
                "mns": [mn, other],
                "rewrite": {"passwords": {mn: "PROV01"}, "flag_version": "2025"},
            }]},
        )
    )  # fmt: skip
    base = recent_base(3)
    frames = [
        upload(mn, 0, base),
        upload(other, 1, base),
        upload("88888880000000000000E299", 2, base),
    ]
    dev = await Device.connect(gw.port)
    for data in frames:
        await dev.send(data)
    try:
        await wait_for(lambda: len(platform.frames) >= 2, "the rewritten frames")
        got = platform.by_mn()
        assert set(got) == {mn, other}  # the third MN is not selected for this platform
        for original, (rewritten,) in ((frames[0], got[mn]), (frames[1], got[other])):
            head, orig_head = header_of(rewritten), header_of(original)
            assert head["Flag"] == str((2 << 2) | 1)
            assert {k: v for k, v in head.items() if k not in ("PW", "Flag")} == {
                k: v for k, v in orig_head.items() if k not in ("PW", "Flag")
            }
            assert rewritten.split(b"CP=&&", 1)[1][:-6] == original.split(b"CP=&&", 1)[1][:-6]
        assert header_of(got[mn][0])["PW"] == "PROV01"
        assert header_of(got[other][0])["PW"] == "123456"  # no password of its own there
        upstream = gw.forwarder.upstreams[0]
        await wait_for(lambda: not upstream.pending, "confirmations")
        samples = await scrape(gw.metrics_port)
        assert metric(samples, "hj212_forward_confirmed_total", upstream="prov", by="9014") == 2
    finally:
        await dev.close()
        await platform.close()


def test_an_upstream_at_our_own_address_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="own listener"):
        load_settings(
            None,
            {
                "listen": {"host": "127.0.0.1", "port": 2121},
                "forward": {"upstreams": [{"name": "me", "host": "localhost", "port": 2121}]},
            },
        )


async def test_an_upstream_resolving_to_our_listener_stops_the_start(sqlite_path: str) -> None:
    """``127.1`` passes the configuration check (it is not spelled as a local address) but
    resolves to 127.0.0.1, where the gateway listens: it refuses to start."""
    probe = FakePlatform()
    await probe.listen()
    port = probe.port
    await probe.close()
    settings = gateway_settings(
        {"sqlite_path": sqlite_path},
        listen={"port": port},
        forward={"upstreams": [{"name": "loop", "host": "127.1", "port": port}]},
    )
    gw = Gateway(settings)
    with pytest.raises(ForwardError, match="own listener"):
        await gw.start()
    assert gw.server is not None
    assert not gw.server.is_serving()
