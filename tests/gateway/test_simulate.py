"""The device simulator: fleet, schedule, frame content, quirks, and row accounting.

The TCP tests run the simulator against a small fake gateway in the same event loop that
decodes every frame with the protocol decoder, answers with ``reply_for`` and records the
distinct row keys it saw; the simulator's own count must match them exactly.
"""

from __future__ import annotations

import asyncio
import calendar
import collections
import dataclasses
import itertools
from collections.abc import Iterator

import pytest

from gateway.sim import FleetConfig, RunConfig, make_fleet, parse_mix, run_in_loop
from gateway.sim.content import (
    CN_DAY,
    CN_HEARTBEAT,
    CN_HOUR,
    CN_INFO,
    CN_MINUTE,
    CN_REALTIME,
    CP_LIMIT,
    FACTORS,
    build_frames,
    local_text,
    qn_text,
    rows_per_frame,
)
from gateway.sim.fleet import PROFILES, QUIRKS_2005, VERSIONS, DeviceSpec, apportion, source_ip
from gateway.sim.runner import processes_needed, slices
from gateway.sim.schedule import due, history, next_due, streams
from gateway.sim.stats import SimStats, percentile
from protocol import (
    Frame,
    FrameBuffer,
    Packet,
    ProtocolError,
    Quirk,
    Rejected,
    decode,
    reply_for,
)

SEED = 5
# Local wall-clock seconds (the units' clock): 2024-03-15 10:00:00.
TEN_AM = calendar.timegm((2024, 3, 15, 10, 0, 0))
MIDNIGHT = calendar.timegm((2024, 3, 16, 0, 0, 0))


def _fleet(n: int = 400, quirky_share: float = 0.1) -> list[DeviceSpec]:
    return make_fleet(FleetConfig(devices=n, seed=SEED, quirky_share=quirky_share))


def _spec(profile: str, version: str, quirk: str | None = None) -> DeviceSpec:
    for spec in _fleet(400, quirky_share=0.0):
        if spec.profile == profile and spec.version == version:
            return dataclasses.replace(spec, quirk=quirk, ack_realtime=True)
    raise AssertionError(f"no {profile}/{version} unit in the test fleet")


def _qns() -> Iterator[str]:
    ms = TEN_AM * 1000
    while True:
        ms += 1
        yield qn_text(ms)


def _one(data: bytes, *, lenient: bool = True) -> tuple[Frame, Packet]:
    items = FrameBuffer(lenient=lenient).feed(data)
    frames = [i for i in items if isinstance(i, Frame)]
    assert len(frames) == 1, items
    return frames[0], decode(frames[0], lenient=lenient)


# -- fleet ------------------------------------------------------------------------------


def test_fleet_is_deterministic_and_shares_are_exact() -> None:
    fleet = _fleet(1000)
    assert fleet == _fleet(1000)
    assert collections.Counter(s.profile for s in fleet) == {
        "water": 500,
        "gas": 400,
        "incinerator": 100,
    }
    assert collections.Counter(s.version for s in fleet) == {"2017": 800, "2005": 100, "2025": 100}
    assert sum(1 for s in fleet if s.quirk) == 100
    assert {s.quirk for s in fleet if s.quirk} == set(QUIRKS_2005)
    assert all(s.quirk != "no_qn_flag" or s.version == "2005" for s in fleet)
    assert len({s.mn for s in fleet}) == 1000
    for s in fleet:
        assert len(s.mn) == (14 if s.version == "2005" else 24)
        assert all(c in "0123456789ABCDEF" for c in s.mn)
        assert len(s.pw) == 6
        assert s.pw.isdigit()
        assert s.st == ("32" if s.profile == "water" else "31")


def test_seed_changes_the_fleet() -> None:
    a = make_fleet(FleetConfig(devices=50, seed=1))
    b = make_fleet(FleetConfig(devices=50, seed=2))
    assert {s.mn for s in a}.isdisjoint({s.mn for s in b})


def test_parse_mix_normalises_and_rejects_nonsense() -> None:
    assert parse_mix("water=1, gas=3", PROFILES) == {"water": 0.25, "gas": 0.75}
    assert parse_mix("2017=0.8,2005=0.1,2025=0.1", VERSIONS)["2017"] == pytest.approx(0.8)
    for bad in ("oil=1", "water=x", "water=0", "water", "water=-1"):
        with pytest.raises(ValueError):
            parse_mix(bad, PROFILES)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 10, 99, 1000, 12_345])
def test_apportion_adds_up(n: int) -> None:
    counts = apportion(n, {"a": 0.5, "b": 0.4, "c": 0.1})
    assert sum(counts.values()) == n
    assert abs(counts["a"] - n * 0.5) < 1


def test_source_addresses_are_loopback_and_change_on_reconnect() -> None:
    addrs = {source_ip(i) for i in range(20_000)}
    assert len(addrs) == 20_000
    assert all(a.startswith("127.") for a in addrs)
    assert source_ip(7) != source_ip(7, generation=1)
    assert int(source_ip(999_999, generation=7).split(".")[1]) < 256


def test_slices_cover_the_fleet_within_the_file_limit() -> None:
    assert slices(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert slices(2, 4) == [(0, 1), (1, 2)]
    assert processes_needed(12_000) == 1
    assert processes_needed(12_000, sockets_per_device=2) == 2  # silent storm
    assert processes_needed(100_000) == 6


# -- schedule -------------------------------------------------------------------------


def test_one_hour_of_a_2025_unit() -> None:
    spec = _spec("water", "2025")
    events = due(streams(spec), TEN_AM, TEN_AM + 3600)
    assert [e.t for e in events] == sorted(e.t for e in events)
    counts = collections.Counter(e.cn for e in events)
    assert counts == {
        CN_REALTIME: 120,  # every 30 s
        CN_HEARTBEAT: 60,  # every 60 s
        CN_INFO: 12,  # every 5 min
        CN_MINUTE: 6,  # every 10 min
        CN_HOUR: 1,
    }
    for e in events:
        if e.cn == CN_MINUTE:
            assert e.data_time % 600 == 0
            assert e.t - e.data_time == 600 + spec.offset_minute
        elif e.cn == CN_HOUR:
            assert e.data_time == TEN_AM - 3600
            assert e.t == TEN_AM + spec.offset_hour
        else:
            assert e.data_time == e.t


def test_a_day_has_one_daily_upload_and_2005_units_send_no_3020() -> None:
    spec = _spec("gas", "2005")
    events = due(streams(spec), MIDNIGHT - 12 * 3600, MIDNIGHT + 12 * 3600)
    counts = collections.Counter(e.cn for e in events)
    assert counts[CN_DAY] == 1
    assert counts[CN_HOUR] == 24
    assert CN_INFO not in counts
    assert CN_HEARTBEAT not in counts
    (day,) = [e for e in events if e.cn == CN_DAY]
    assert day.data_time == MIDNIGHT - 86_400
    assert day.t == MIDNIGHT + spec.offset_day


def test_windows_partition_the_schedule() -> None:
    s = streams(_spec("incinerator", "2017"))
    whole = due(s, TEN_AM, TEN_AM + 7200)
    cuts = [TEN_AM, TEN_AM + 1, TEN_AM + 599, TEN_AM + 3601, TEN_AM + 7200]
    pieces = [e for a, b in itertools.pairwise(cuts) for e in due(s, a, b)]
    assert pieces == whole
    assert next_due(s, TEN_AM) == whole[0].t


def test_first_sends_are_spread_over_the_interval() -> None:
    fleet = _fleet(3000)
    per_second = collections.Counter(s.offset_rtd for s in fleet)
    assert len(per_second) == 30
    assert max(per_second.values()) < 3 * 3000 / 30


def test_history_is_the_whole_hours_before_the_start() -> None:
    start = TEN_AM + 1234
    slots = history(start, 24)
    assert len(slots) == 24
    assert all(e.cn == CN_HOUR and e.t == start and e.history for e in slots)
    assert [e.data_time for e in slots] == [TEN_AM - k * 3600 for k in range(24, 0, -1)]


# -- content ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("profile", PROFILES)
def test_frames_decode_strictly_and_carry_their_rows(profile: str, version: str) -> None:
    spec = _spec(profile, version)
    qns = _qns()
    cns = [CN_REALTIME, CN_MINUTE, CN_HOUR, CN_DAY, CN_INFO, CN_HEARTBEAT]
    for cn in cns:
        data_time = TEN_AM
        frames = build_frames(spec, SEED, cn, data_time, qns.__next__)
        codes: set[str] = set()
        infos = 0
        for pno, f in enumerate(frames, start=1):
            frame, p = _one(f.data, lenient=False)
            assert frame.quirks == ()
            assert p.quirks == ()
            assert (p.mn, p.pw, p.st, p.cn, p.qn) == (spec.mn, spec.pw, spec.st, str(cn), f.qn)
            assert p.version == version
            assert p.ack_requested == f.ack
            # The gateway answers exactly the frames the unit waits for.
            assert (reply_for(p) is not None) == f.ack
            if cn != CN_HEARTBEAT:
                assert p.cp["DataTime"] == local_text(data_time)
            if len(frames) > 1:
                assert (p.split, p.pnum, p.pno) == (True, len(frames), pno)
                cp_len = len(f.data) - f.data.index(b"CP=&&") - 6  # minus CRC and CR LF
                assert cp_len <= CP_LIMIT[version]
            assert len(p.data) == f.readings + f.infos
            codes |= set(p.data)
            infos += f.infos
        readings, info_rows = rows_per_frame(spec, cn)
        assert sum(f.readings for f in frames) == readings
        assert infos == info_rows
        assert len(codes) == readings + info_rows
        if cn in (CN_REALTIME, CN_MINUTE, CN_HOUR, CN_DAY):
            old = {f.code_2005 for f in FACTORS[profile]}
            new = {f.code for f in FACTORS[profile]}
            assert codes == (old if version == "2005" else new)


def test_long_aggregates_are_split_at_item_boundaries() -> None:
    spec = _spec("incinerator", "2017")
    frames = build_frames(spec, SEED, CN_MINUTE, TEN_AM, _qns().__next__)
    assert len(frames) == 2
    packets = [_one(f.data)[1] for f in frames]
    assert [p.flag for p in packets] == [7, 7]  # 2017 + split + ack
    assert len({p.qn for p in packets}) == 2  # each part has its own QN (protocol.md 6.5)
    assert {p.cp["DataTime"] for p in packets} == {local_text(TEN_AM)}
    assert set(packets[0].data).isdisjoint(packets[1].data)


def test_values_are_a_function_of_seed_and_slot() -> None:
    spec = _spec("water", "2017")
    a = build_frames(spec, SEED, CN_HOUR, TEN_AM, lambda: "20240315100000001")
    b = build_frames(spec, SEED, CN_HOUR, TEN_AM, lambda: "20240315100000001")
    other = build_frames(spec, SEED + 1, CN_HOUR, TEN_AM, lambda: "20240315100000001")
    assert [f.data for f in a] == [f.data for f in b]
    assert [f.data for f in a] != [f.data for f in other]
    for f in a:
        p = _one(f.data)[1]
        for fields in p.data.values():
            lo, avg, hi = (float(fields[k]) for k in ("Min", "Avg", "Max"))
            assert lo <= avg <= hi
            assert fields["Flag"] in {"N", "C", "M"}


@pytest.mark.parametrize(
    ("quirk", "expected"),
    [
        ("crc_lower", Quirk.CRC_LOWER),
        ("tail_lf", Quirk.TAIL_LF),
        ("time_ms", Quirk.TIME_MS),
        ("spaces", Quirk.WHITESPACE),
        ("empty_items", Quirk.EMPTY_ITEM),
    ],
)
def test_quirky_frames_show_their_quirk_and_keep_their_rows(quirk: str, expected: Quirk) -> None:
    spec = _spec("gas", "2017", quirk)
    plain = _spec("gas", "2017")
    shown = 0
    probe = b""
    for cn, data_time in itertools.product((CN_REALTIME, CN_HOUR), range(TEN_AM, TEN_AM + 9)):
        (f,) = build_frames(spec, SEED, cn, data_time, _qns().__next__)
        (g,) = build_frames(plain, SEED, cn, data_time, _qns().__next__)
        frame, p = _one(f.data)
        # A CRC of digits only reads the same in either case: that frame shows no quirk.
        if quirk != "crc_lower" or any(c in b"ABCDEF" for c in g.data[-6:-2]):
            assert expected in (*frame.quirks, *p.quirks)
            shown += 1
            probe = f.data
        assert frame.crc_variant.value == "hj212"
        assert set(p.data) == set(_one(g.data)[1].data)
        assert f.readings == g.readings
    assert shown > 0
    if quirk in ("crc_lower", "tail_lf"):
        items = FrameBuffer(lenient=False).feed(probe)
        assert not any(isinstance(i, Frame) for i in items)


def test_2005_units_without_qn_and_flag_ask_no_reply() -> None:
    spec = _spec("water", "2005", "no_qn_flag")
    frames = build_frames(spec, SEED, CN_REALTIME, TEN_AM, _qns().__next__)
    (f,) = frames
    assert not f.ack
    assert f.qn is None
    _, p = _one(f.data)
    assert {Quirk.MISSING_QN, Quirk.MISSING_FLAG} <= set(p.quirks)
    assert p.qn is None
    assert p.flag is None
    assert reply_for(p) is None
    assert len(p.data) == f.readings == len(FACTORS["water"])


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([], 0.5) is None


def test_stats_merge_adds_counts_and_keeps_the_slowest_phase() -> None:
    a, b = SimStats(devices=2, frames_sent=5, load_s=1.0), SimStats(devices=3, frames_sent=7)
    b.load_s = 2.0
    b.frames_by_cn[2011] = 4
    a.merge(b)
    assert (a.devices, a.frames_sent, a.load_s, a.frames_by_cn) == (5, 12, 2.0, {2011: 4})


# -- over TCP, against a fake gateway ---------------------------------------------------


class _FakeGateway(asyncio.Protocol):
    """Decodes, records distinct row keys, replies via ``reply_for``; can swallow replies."""

    def __init__(self, seen: _Seen) -> None:
        self.seen = seen
        self.framer = FrameBuffer(lenient=True)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.seen.connections += 1

    def data_received(self, data: bytes) -> None:
        for item in self.framer.feed(data):
            if isinstance(item, Rejected):
                self.seen.rejected += 1
                continue
            try:
                p = decode(item)
            except ProtocolError:  # pragma: no cover - the simulator sends none
                self.seen.rejected += 1
                continue
            self.seen.frames += 1
            for record in p.records:
                for code, fields in record.data.items():
                    key = (p.mn, p.cn, record.data_time, p.cp.get("PolId", ""), code)
                    (self.seen.infos if "Info" in fields else self.seen.readings).add(key)
            reply = reply_for(p)
            if reply is None or self.transport is None:
                continue
            self.seen.acked += 1
            if self.seen.swallow and p.qn not in self.seen.swallowed and self.seen.acked % 3 == 0:
                self.seen.swallowed.add(p.qn)  # first copy unanswered: the unit resends
                continue
            self.transport.write(reply)


@dataclasses.dataclass
class _Seen:
    swallow: bool = False
    acked: int = 0
    frames: int = 0
    rejected: int = 0
    connections: int = 0
    readings: set[tuple[str | None, ...]] = dataclasses.field(default_factory=set)
    infos: set[tuple[str | None, ...]] = dataclasses.field(default_factory=set)
    swallowed: set[str | None] = dataclasses.field(default_factory=set)


async def _run_against_fake(seen: _Seen, cfg: RunConfig) -> SimStats:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _FakeGateway(seen), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = dataclasses.replace(cfg, port=port)
    try:
        return await run_in_loop(cfg)
    finally:
        server.close()
        await server.wait_closed()


async def test_distinct_rows_equal_what_the_gateway_saw_despite_resends() -> None:
    seen = _Seen(swallow=True)
    fleet = FleetConfig(devices=30, seed=SEED, quirky_share=0.6)
    cfg = RunConfig("127.0.0.1", 0, fleet, TEN_AM - 30, duration_s=1.5, speed=150, over_time_s=0.2)
    stats = await _run_against_fake(seen, cfg)
    assert stats.ok, stats.errors
    assert stats.resends > 0
    assert stats.resends == stats.timeouts
    assert stats.rows_reading == len(seen.readings) > 0
    assert stats.rows_info == len(seen.infos) > 0
    assert stats.frames_sent + stats.resends == seen.frames
    assert stats.replied == stats.expected_replies
    # A resend draws a reply too once answered; the extra ones are counted, not matched.
    assert stats.replies_received == stats.replied + stats.unmatched_replies


async def test_reconnect_storm_brings_every_unit_back_and_loses_nothing() -> None:
    seen = _Seen()
    fleet = FleetConfig(devices=25, seed=SEED, quirky_share=0.2)
    cfg = RunConfig(
        "127.0.0.1",
        0,
        fleet,
        TEN_AM,
        mode="reconnect-storm",
        duration_s=1.5,
        storm_after_s=0.5,
        speed=120,
        over_time_s=1.0,
    )
    stats = await _run_against_fake(seen, cfg)
    assert stats.ok, stats.errors
    assert stats.storm_devices == stats.storm_reconnected == 25
    assert stats.storm_storing == 25
    assert stats.connects == seen.connections == 50
    assert stats.rows_reading == len(seen.readings)


async def test_backfill_storm_sends_every_hour_once_and_ends_when_done() -> None:
    seen = _Seen()
    fleet = FleetConfig(devices=12, seed=SEED, quirky_share=0.0)
    # The load phase ends once every history is in, long before the duration.
    cfg = RunConfig(
        "127.0.0.1",
        0,
        fleet,
        TEN_AM + 1800,
        mode="backfill-storm",
        history_hours=6,
        duration_s=15.0,
        speed=1,
        over_time_s=2.0,
    )
    stats = await _run_against_fake(seen, cfg)
    assert stats.ok, stats.errors
    assert stats.backfill_devices_done == 12
    hour_rows = {k for k in seen.readings if k[1] == str(CN_HOUR)}
    expected = sum(6 * len(FACTORS[s.profile]) for s in make_fleet(fleet))
    assert len(hour_rows) == expected
    assert stats.rows_reading == len(seen.readings)
