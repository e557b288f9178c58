"""Clock skew: measured from real-time uploads only, kept in presence and a histogram; a
drifting device gets one automatic 1012 per period, a backfilling one none, and a device
that never answers is left alone after the configured tries."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest

from gateway.commands.skew import SkewTracker
from tests.e2e.conftest import gateway_settings
from tests.e2e.helpers import metric, scrape
from tests.e2e.test_commands import (
    MN,
    TZ,
    Cmd,
    ScriptedDevice,
    fetch,
    local,
    obliging,
    t14,
    wait_row,
)

pytestmark = pytest.mark.postgres

S = 1_000_000
T0 = 1_710_000_000 * S


def tracker(**kw: float) -> SkewTracker:
    args = {
        "threshold_s": 60.0,
        "packets": 3,
        "spread_s": 30.0,
        "period_s": 3600.0,
        "window_s": 300.0,
        **kw,
    }
    return SkewTracker(**args)  # type: ignore[arg-type]


# -- the pure decision (time passed in) ----------------------------------------------------


def test_a_drifting_clock_fires_once_per_period() -> None:
    t = tracker()
    fired = []
    for i in range(200):  # one upload every 30 s for 100 minutes, clock 10 minutes fast
        now = T0 + i * 30 * S
        obs = t.observe("A", now + 600 * S + 120_000, now + 598 * S, now)
        if i == 0:
            assert obs is None  # one packet alone is not believed
            continue
        assert obs is not None
        assert round(obs.skew_s) == 600
        fired += [i] if obs.fire else []
    # The third upload completes the evidence; the next chance is an hour later.
    assert fired == [2, 122]


def test_the_tracker_keeps_a_bounded_number_of_clocks() -> None:
    """Invented MNs cannot grow it without end: the clock created longest ago goes."""
    t = tracker(max_devices=2)
    for mn in ("A", "B", "C"):  # each clock 10 minutes fast: two packets make a run
        t.observe(mn, T0 + 600 * S, T0 + 599 * S, T0)
    assert t.observe("C", T0 + 630 * S, T0 + 629 * S, T0 + 30 * S) is not None
    # "A" was forgotten: its next packet starts a new run (None: not believed alone).
    assert t.observe("A", T0 + 630 * S, T0 + 629 * S, T0 + 30 * S) is None


def test_backfilled_and_replayed_packets_never_fire() -> None:
    t = tracker()
    for i in range(50):
        now = T0 + i * S // 10  # a burst: ten packets a second
        old = T0 - 86_400 * S + i * 60 * S  # yesterday's minutes, in order
        # Fresh QN on old data: history, measures nothing.
        assert t.observe("B", now, old, now) is None
        # Old QN with its old data (a replayed queue): never agrees with itself.
        assert t.observe("C", old + 500_000, old, now) is None
    # Without a QN only DataTime near receipt measures anything.
    assert t.observe("D", None, T0 - 3600 * S, T0) is None
    obs = t.observe("D", None, T0 - 10 * S, T0)
    assert obs is not None
    assert obs.skew_s == -10


def test_a_good_packet_or_a_change_of_side_restarts_the_count() -> None:
    t = tracker()
    seq = [+120, +120, 0, +120, +120, -120, -120, -120]
    fires = [t.observe("E", T0 + s * S, T0 + s * S, T0) for s in seq]
    assert [o.fire if o else None for o in fires] == [
        None,  # the first beyond the threshold needs a second to agree
        False,
        False,  # within the threshold: the count starts again
        None,
        False,
        None,  # the other side: again
        False,
        True,
    ]


# -- end to end ------------------------------------------------------------------------------

SKEW_S = 900.0  # the drifting device's clock runs 15 minutes fast


async def realtime(dev: ScriptedDevice, n: int, clock_offset_s: float) -> None:
    """``n`` real-time uploads as a device with that clock makes them: DataTimes 20 s
    apart up to now, QN = now (both by the device's clock), each acked before the next."""
    for i in range(n):
        slot = local(clock_offset_s).replace(microsecond=0) - timedelta(seconds=20 * (n - 1 - i))
        await dev.acked_upload(
            "2011",
            f"DataTime={t14(slot)};w01018-Rtd=35.{i},w01018-Flag=N",
            qn=dev.next_qn(clock_offset_s),
        )


async def presence_skew(dsn: str, mn: str) -> float:
    """The device's clock skew in hj212.presence, once written (every presence interval)."""
    async with asyncio.timeout(10):
        while True:
            rows = await fetch(dsn, "SELECT clock_skew_s FROM hj212.presence WHERE mn = $1", mn)
            if rows and rows[0]["clock_skew_s"] is not None:
                return float(rows[0]["clock_skew_s"])
            await asyncio.sleep(0.05)


async def test_drifting_device_gets_one_1012_per_period(clean_pg: str, start_gateway: Any) -> None:
    gw = await start_gateway(
        gateway_settings(
            {"dsn": clean_pg}, commands={"clock_skew_packets": 3, "clock_skew_fix": True}
        )
    )
    dev = await ScriptedDevice(script=obliging).connect(gw.port)
    await realtime(dev, 3, SKEW_S)
    (fix,) = await dev.wait_commands(1)
    assert fix.cn == "1012"
    # The time sent is ours (the device zone's wall clock), not the device's.
    sent = datetime.strptime(fix.cp["SystemTime"], "%Y%m%d%H%M%S").replace(tzinfo=TZ)
    assert abs((sent - local()).total_seconds()) < 120
    (row,) = await fetch(clean_pg, "SELECT id, requested_by FROM hj212.command")
    assert row["requested_by"] == "gateway:clock_skew"
    assert (await wait_row(clean_pg, row["id"]))["state"] == "done"
    # The device said done but its clock is still off: no second 1012 within the period.
    await realtime(dev, 6, SKEW_S)
    barrier = await fetch(
        clean_pg,
        "INSERT INTO hj212.command (mn, cn) VALUES ($1, 1061) RETURNING id",
        MN,
    )
    assert (await wait_row(clean_pg, barrier[0]["id"]))["state"] == "done"
    assert [c.cn for c in dev.commands] == ["1012", "1061"]
    # The skew is kept per device in presence, and in the histogram (no MN label).
    assert abs(await presence_skew(clean_pg, MN) - SKEW_S) < 30
    s = await scrape(gw.metrics_port)
    assert metric(s, "hj212_clock_fixes_total", outcome="queued") == 1
    assert metric(s, "hj212_clock_fixes_total", outcome="recent") == 0
    assert metric(s, "hj212_clock_skew_seconds_count") >= 1
    assert metric(s, "hj212_clock_skew_seconds_bucket", le="300.0") == 0
    await dev.close()


async def test_backfilling_device_gets_none(clean_pg: str, start_gateway: Any) -> None:
    gw = await start_gateway(
        gateway_settings(
            {"dsn": clean_pg}, commands={"clock_skew_packets": 3, "clock_skew_fix": True}
        )
    )
    dev = await ScriptedDevice(script=obliging).connect(gw.port)
    yesterday = local(-86_400).replace(second=0, microsecond=0)
    for i in range(8):
        slot = yesterday + timedelta(minutes=i)
        cp = f"DataTime={t14(slot)};w01018-Rtd=1.{i},w01018-Flag=N"
        # Yesterday's real-time data sent now (fresh QN), then replayed with its old QN.
        await dev.acked_upload("2011", cp)
        await dev.acked_upload("2011", cp, qn=t14(slot) + f"{i:03d}")
    for hour in range(6):  # and hourly history
        slot = yesterday.replace(minute=0) + timedelta(hours=hour)
        await dev.acked_upload("2061", f"DataTime={t14(slot)};w01018-Avg=3{hour},w01018-Flag=N")
    await realtime(dev, 4, 0.0)  # its clock is right
    barrier = await fetch(
        clean_pg, "INSERT INTO hj212.command (mn, cn) VALUES ($1, 1061) RETURNING id", MN
    )
    assert (await wait_row(clean_pg, barrier[0]["id"]))["state"] == "done"
    assert [c.cn for c in dev.commands] == ["1061"]
    # Only the real-time uploads of the right clock were measured.
    assert abs(await presence_skew(clean_pg, MN)) < 60
    s = await scrape(gw.metrics_port)
    assert metric(s, "hj212_clock_fixes_total", outcome="queued") == 0
    count = metric(s, "hj212_clock_skew_seconds_count")
    assert count >= 1
    assert metric(s, "hj212_clock_skew_seconds_bucket", le="-60.0") == 0
    assert metric(s, "hj212_clock_skew_seconds_bucket", le="60.0") == count
    await dev.close()


async def test_unanswered_fixes_give_up_and_the_switch_turns_them_off(
    clean_pg: str, start_gateway: Any
) -> None:
    async def deaf(dev: ScriptedDevice, cmd: Cmd) -> None:
        return None

    gw = await start_gateway(
        gateway_settings(
            {"dsn": clean_pg},
            commands={
                "clock_skew_fix": True,
                "clock_skew_packets": 2,
                "clock_skew_tries": 1,
                "clock_skew_period_s": 0.01,
                "timeout_s": 0.2,
                "retries": 0,
            },
        )
    )
    dev = await ScriptedDevice(script=deaf).connect(gw.port)
    await realtime(dev, 2, SKEW_S)
    (_fix,) = await dev.wait_commands(1)
    (row,) = await fetch(clean_pg, "SELECT id FROM hj212.command")
    failed = await wait_row(clean_pg, row["id"])
    assert (failed["state"], failed["reason"]) == ("failed", "no_answer")
    await realtime(dev, 2, SKEW_S)

    async def given_up() -> float:
        return metric(await scrape(gw.metrics_port), "hj212_clock_fixes_total", outcome="given_up")

    async with asyncio.timeout(10):
        while await given_up() < 1:
            await asyncio.sleep(0.05)
    assert len(dev.commands) == 1
    await dev.close()
    await gw.stop()

    off = await start_gateway(
        gateway_settings(
            {"dsn": clean_pg},
            commands={"clock_skew_packets": 2, "clock_skew_fix": False},
        )
    )
    other_mn = "88888880000000000000A077"
    other = await ScriptedDevice(mn=other_mn, script=deaf).connect(off.port)
    await realtime(other, 4, SKEW_S)
    assert abs(await presence_skew(clean_pg, other_mn) - SKEW_S) < 30  # measured, not acted on
    s = await scrape(off.metrics_port)
    assert sum(metric(s, "hj212_clock_fixes_total", outcome=o) for o in ("queued", "error")) == 0
    await other.close()
