"""A fleet of simulated DAUs for the fault tests (outage, crash, flood), and its own check.

Each ``Dau`` holds one TCP connection and sends its 2011 uploads in order, one at a time,
on a fixed schedule. Like a real DAU it waits for the 9014 reply carrying the upload's
QN; after ``over_time_s`` without one it resends the same frame, and when the connection
drops (a gateway killed, restarted, or closing it) it reconnects and resends whatever was
not replied to. Every upload has its own DataTime, so the rows the gateway should hold
afterwards are exactly ``uploads x CODES`` per device, whatever was resent.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from tests.e2e.conftest import gateway_settings
from tests.e2e.helpers import frame

CODES = ("w01018", "w21003", "w21011", "w00000")
ROWS_PER_UPLOAD = 1 + len(CODES)
"""The frame archive row and one reading row per code."""
T0_LOCAL = 1_710_000_000
"""Simulated device time of upload 0 (local wall clock, seconds): 2024-03-09."""
RECONNECT_S = (0.05, 0.2, 0.5, 1.0)
"""Waits before successive reconnect attempts (then the last repeats)."""


def stamp(seconds: int) -> str:
    """Local wall-clock ``YYYYMMDDhhmmss`` of a simulated time (no zone arithmetic)."""
    import datetime as dt

    return (dt.datetime(1970, 1, 1) + dt.timedelta(seconds=seconds)).strftime("%Y%m%d%H%M%S")


@dataclass
class Upload:
    index: int
    qn: str
    data_time: str
    wire: bytes
    first_sent: float | None = None
    replied: float | None = None
    sends: int = 0


@dataclass
class Dau:
    """One simulated data acquisition unit."""

    mn: str
    port: Callable[[], int]
    over_time_s: float
    interval_s: float
    phase_s: float
    host: str = "127.0.0.1"
    uploads: list[Upload] = field(default_factory=list)
    timeouts: int = 0
    connects: int = 0
    disconnects: int = 0
    _writer: asyncio.StreamWriter | None = None
    _reader_task: asyncio.Task[None] | None = None
    _current: Upload | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def upload(self, i: int) -> Upload:
        """Upload ``i``: DataTime ``T0 + i`` minutes, a QN of its own, four values."""
        data_time = stamp(T0_LOCAL + 60 * i)
        qn = f"{data_time}{i % 1000:03d}"
        items = ";".join(
            f"{c}-Rtd={i}.{k}{len(self.mn) % 7},{c}-Flag=N" for k, c in enumerate(CODES)
        )
        seg = (
            f"QN={qn};ST=32;CN=2011;PW=123456;MN={self.mn};Flag=5;"
            f"CP=&&DataTime={data_time};{items}&&"
        )
        return Upload(i, qn, data_time, frame(seg))

    async def run(self, t0: float, load_until: float, give_up_at: float) -> None:
        """Send uploads due from ``t0`` every ``interval_s`` until ``load_until``; keep
        resending unanswered ones until every one is answered or ``give_up_at``."""
        loop = asyncio.get_running_loop()
        i = 0
        try:
            while True:
                due = t0 + self.phase_s + i * self.interval_s
                if due >= load_until:
                    return
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                up = self.upload(i)
                self.uploads.append(up)
                i += 1
                if not await self._deliver(up, give_up_at):
                    return
        finally:
            await self.close()

    async def _deliver(self, up: Upload, give_up_at: float) -> bool:
        loop = asyncio.get_running_loop()
        self._current = up
        failures = 0
        while up.replied is None:
            if loop.time() >= give_up_at:
                return False
            if self._writer is None and not await self._connect():
                await asyncio.sleep(RECONNECT_S[min(failures, len(RECONNECT_S) - 1)])
                failures += 1
                continue
            assert self._writer is not None
            self._changed.clear()
            try:
                self._writer.write(up.wire)
                await self._writer.drain()
            except (ConnectionError, OSError):
                self._drop()
                continue
            up.sends += 1
            if up.first_sent is None:
                up.first_sent = loop.time()
            with contextlib.suppress(TimeoutError):
                wait_s = min(self.over_time_s, max(0.0, give_up_at - loop.time()))
                async with asyncio.timeout(wait_s):
                    while up.replied is None and self._writer is not None:
                        await self._changed.wait()
                        self._changed.clear()
            if up.replied is None and self._writer is not None:
                self.timeouts += 1  # OverTime: resend on the same connection
        return True

    async def _connect(self) -> bool:
        try:
            async with asyncio.timeout(10.0):
                reader, writer = await asyncio.open_connection(self.host, self.port())
        except (OSError, TimeoutError):
            return False
        self.connects += 1
        self._writer = writer
        self._reader_task = asyncio.get_running_loop().create_task(self._read(reader, writer))
        return True

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line.endswith(b"\r\n"):
                    break
                i = line.find(b"QN=")
                up = self._current
                if i >= 0 and up is not None and line[i + 3 : i + 20].decode() == up.qn:
                    if up.replied is None:
                        up.replied = asyncio.get_running_loop().time()
                    self._changed.set()
        except (ConnectionError, OSError):
            pass
        finally:
            if self._writer is writer:
                self._drop()

    def _drop(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            self.disconnects += 1
            writer.close()
        self._changed.set()

    async def close(self) -> None:
        task = self._reader_task
        self._drop()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Fleet:
    """``devices`` DAUs with MNs ``<prefix><index>``, one upload every ``interval_s`` each."""

    def __init__(
        self,
        devices: int,
        port: Callable[[], int] | int,
        *,
        prefix: str = "8888888000000000",
        interval_s: float = 1.0,
        over_time_s: float = 5.0,
        seed: int = 212,
    ) -> None:
        rng = random.Random(seed)
        get_port = port if callable(port) else (lambda: port)
        width = 24 - len(prefix)
        self.prefix = prefix
        self.daus = [
            Dau(
                f"{prefix}{i:0{width}d}",
                get_port,
                over_time_s,
                interval_s,
                rng.uniform(0.0, interval_s),
            )
            for i in range(devices)
        ]

    async def run(self, load_s: float, settle_s: float) -> None:
        """Load for ``load_s``, then let every unanswered upload be answered (at most
        ``settle_s`` more: a hang guard)."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.gather(*(d.run(t0, t0 + load_s, t0 + load_s + settle_s) for d in self.daus))

    @property
    def uploads(self) -> list[Upload]:
        return [u for d in self.daus for u in d.uploads]

    def replied(self) -> int:
        return sum(1 for d in self.daus for u in d.uploads if u.replied is not None)

    def unanswered(self) -> list[Upload]:
        return [u for u in self.uploads if u.replied is None]

    def latencies(self) -> list[float]:
        return sorted(
            u.replied - u.first_sent
            for u in self.uploads
            if u.replied is not None and u.first_sent is not None
        )

    def expected(self) -> set[tuple[str, str]]:
        """(mn, DataTime) of every upload sent: each should hold one row per code."""
        return {(d.mn, u.data_time) for d in self.daus for u in d.uploads}

    async def stored(self, dsn: str) -> dict[tuple[str, str], int]:
        """(mn, DataTime) -> reading rows in the database, for this fleet's MNs."""
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                "SELECT mn, to_char(data_time AT TIME ZONE 'Asia/Shanghai', "
                "'YYYYMMDDHH24MISS') AS t, count(*) AS n, max(revision) AS rev "
                "FROM hj212.reading WHERE mn LIKE $1 GROUP BY 1, 2",
                self.prefix + "%",
            )
        finally:
            await conn.close()
        assert all(r["rev"] == 0 for r in rows), "a resend changed a stored value"
        return {(r["mn"], r["t"]): r["n"] for r in rows}

    async def check_stored(self, dsn: str) -> None:
        """The database holds exactly the distinct rows sent: every code of every upload,
        nothing more."""
        stored = await self.stored(dsn)
        expected = self.expected()
        missing = expected - stored.keys()
        extra = stored.keys() - expected
        assert not missing, f"{len(missing)} uploads not stored, e.g. {sorted(missing)[:3]}"
        assert not extra, f"{len(extra)} unexpected uploads stored, e.g. {sorted(extra)[:3]}"
        short = {k: n for k, n in stored.items() if n != len(CODES)}
        assert not short, f"uploads with missing values: {list(short.items())[:3]}"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


async def test_fleet_against_a_healthy_gateway(
    sqlite_path: str, start_gateway: Any, tmp_path: Any
) -> None:
    """The fleet itself: against a healthy gateway every upload is answered once, without
    resends, and the spool is never used."""
    gw = await start_gateway(gateway_settings({"sqlite_path": sqlite_path}))
    fleet = Fleet(20, gw.port, interval_s=0.2)
    await fleet.run(load_s=1.0, settle_s=30.0)
    ups = fleet.uploads
    assert len(ups) >= 20 * 4
    assert fleet.unanswered() == []
    assert all(u.sends == 1 for u in ups)
    spool = gw.writer.spool_stats()
    assert spool is not None
    assert spool.appended_batches == 0
    assert gw.writer.stats().rows_written >= len(ups) * ROWS_PER_UPLOAD
