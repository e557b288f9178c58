"""End to end: ``serve`` on port 0 against PostgreSQL, devices over real TCP.

Every golden vector a device sends is replayed four ways (whole, dribbled byte by byte,
all frames in one write, spread over several connections); the rows in hj212.reading,
info, device_status and frame, and every reply byte, are then compared with what the
vectors say. Expected values come from the vector file, never from the code under test.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import asyncpg
import pytest

from tests.e2e.conftest import gateway_settings
from tests.e2e.helpers import Device, expected_reply, frame, load_vectors, metric, scrape, wires

pytestmark = pytest.mark.postgres

SHANGHAI = dt.timezone(dt.timedelta(hours=8))

# Vector line numbers (1-based) by what a device does with them.
UPLOADS = [1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 20, 22, 24, 25, 26, 30]
ANSWERS = [14, 15, 16, 23]  # 9011 / 9012 from the device: archived, no reply, no rows
NOTIFY = [17, 28]  # 1013 and the 2025 heartbeat 9015: answered with 9013
PLATFORM_ONLY = [13]  # 1012 is the platform's command; a device must not send it
DEVICE_FRAMES = UPLOADS + ANSWERS + NOTIFY

VALUE_FIELDS = {
    "Rtd": "rtd", "Avg": "avg", "Min": "min", "Max": "max", "Cou": "cou",
    "ZsRtd": "zs_rtd", "ZsAvg": "zs_avg", "ZsMin": "zs_min", "ZsMax": "zs_max",
}  # fmt: skip


def local_time(text: str) -> dt.datetime:
    naive = dt.datetime.strptime(text[:14], "%Y%m%d%H%M%S")
    return naive.replace(tzinfo=SHANGHAI).astimezone(dt.UTC)


def expected_tables(vectors: list[dict[str, Any]]) -> tuple[dict[Any, Any], set[Any], set[Any]]:
    """Readings keyed (mn, cn, data_time, code) -> columns; info and status row sets."""
    readings: dict[Any, dict[str, Any]] = {}
    infos: set[Any] = set()
    statuses: set[Any] = set()
    for n in UPLOADS:
        v = vectors[n - 1]
        mn, cn = v["header"]["MN"], int(v["header"]["CN"])
        when = local_time(v["cp"]["DataTime"])
        pol = v["cp"].get("PolId", "")
        if "RestartTime" in v["cp"]:
            statuses.add((mn, cn, when, "", "RestartTime", v["cp"]["RestartTime"]))
        for code, fields in v["data"].items():
            for name, text in fields.items():
                if name == "Info":  # log text is stored without its // delimiters
                    value = text.removeprefix("//").removesuffix("//")
                    infos.add((mn, cn, when, pol, code, value))
                elif name in ("RS", "RT"):
                    statuses.add((mn, cn, when, code, name, text))
                else:
                    row = readings.setdefault((mn, cn, when, code), {})
                    if name in VALUE_FIELDS:
                        row[VALUE_FIELDS[name]] = float(text)
                    elif name == "Flag":
                        row["flag"] = text
                    elif name == "EFlag":
                        row["eflag"] = text
                    elif name == "SampleTime":
                        row["sample_time"] = local_time(text)
    return readings, infos, statuses


async def fetch_tables(dsn: str) -> tuple[dict[Any, Any], set[Any], set[Any], list[Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT * FROM hj212.reading")
        info = await conn.fetch("SELECT * FROM hj212.info")
        status = await conn.fetch("SELECT * FROM hj212.device_status")
        frames = await conn.fetch("SELECT ok, reason, cn, mn, raw FROM hj212.frame ORDER BY id")
    finally:
        await conn.close()
    columns = [*VALUE_FIELDS.values(), "flag", "eflag", "sample_time"]
    readings = {
        (r["mn"], r["cn"], r["data_time"], r["code"]): {
            c: r[c] for c in columns if r[c] is not None
        }
        for r in rows
    }
    infos = {
        (r["mn"], r["cn"], r["data_time"], r["pol_id"], r["info_code"], r["value_text"])
        for r in info
    }
    statuses = {
        (r["mn"], r["cn"], r["data_time"], r["device"], r["field"], r["value_text"]) for r in status
    }
    return readings, infos, statuses, list(frames)


def replies_expected(vectors: list[dict[str, Any]]) -> dict[bytes, bytes]:
    """Frame wire -> the exact reply it must get (only frames that ask for one)."""
    out: dict[bytes, bytes] = {}
    for n in UPLOADS + NOTIFY:
        v = vectors[n - 1]
        h = v["header"]
        if "QN" in h and int(h.get("Flag", "0")) & 1:
            cn = "9013" if h["CN"] in ("1013", "9015") else "9014"
            out[v["wire"].encode()] = expected_reply(h, cn)
    return out


async def send_mode(port: int, data: list[bytes], mode: str) -> list[bytes]:
    """Send frames in one of four ways; return every reply received."""
    if mode == "connections":
        # Frames of one MN keep their order on one connection.
        by_mn: dict[bytes, list[bytes]] = {}
        for d in data:
            mn = d.split(b"MN=", 1)[1].split(b";", 1)[0]
            by_mn.setdefault(mn, []).append(d)
        devices = [await Device.connect(port) for _ in by_mn]
        await asyncio.gather(
            *(dev.send(b"".join(f)) for dev, f in zip(devices, by_mn.values(), strict=False))
        )
    else:
        devices = [await Device.connect(port)]
        if mode == "one_write":
            await devices[0].send(b"".join(data))
        else:
            for d in data:
                await devices[0].send(d, dribble=(mode == "dribble"))
    return devices  # type: ignore[return-value]


async def test_vectors_end_to_end(clean_pg: str, start_gateway: Any) -> None:
    vectors = load_vectors()
    gw = await start_gateway(gateway_settings({"dsn": clean_pg}))
    data = wires(vectors, DEVICE_FRAMES)
    want_replies = replies_expected(vectors)
    modes = ["whole", "dribble", "one_write", "connections"]
    for mode in modes:
        devices: list[Device] = await send_mode(gw.port, data, mode)  # type: ignore[assignment]
        total = sum(len(d.replies) for d in devices)
        for _ in range(500):
            total = sum(len(d.replies) for d in devices)
            if total >= len(want_replies):
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # a stray extra reply would arrive by now
        got = sorted(r for d in devices for r in d.replies)
        assert got == sorted(want_replies.values()), mode
        for d in devices:
            await d.close()

    readings, infos, statuses, frames = await fetch_tables(clean_pg)
    exp_readings, exp_infos, exp_statuses = expected_tables(vectors)
    assert readings == exp_readings
    assert infos == exp_infos
    assert statuses == exp_statuses
    # Every frame sent is archived byte for byte, once per send.
    assert len(frames) == len(modes) * len(data)
    assert all(f["ok"] for f in frames)
    assert sorted(bytes(f["raw"]) for f in frames) == sorted(data * len(modes))


async def test_reply_bytes_match_the_standard_examples(clean_pg: str, start_gateway: Any) -> None:
    """Lines 2, 18, 21, 27, 29 of the vectors are the replies to lines 1, 17, 20, 26, 28."""
    vectors = load_vectors()
    gw = await start_gateway(gateway_settings({"dsn": clean_pg}))
    for request, reply in [(1, 2), (17, 18), (20, 21), (26, 27), (28, 29)]:
        dev = await Device.connect(gw.port)
        await dev.send(vectors[request - 1]["wire"].encode())
        got = await dev.wait_replies(1)
        assert got == [vectors[reply - 1]["wire"].encode()]
        await dev.close()


async def test_platform_only_frames_are_archived_not_answered(
    clean_pg: str, start_gateway: Any
) -> None:
    vectors = load_vectors()
    gw = await start_gateway(gateway_settings({"dsn": clean_pg}))
    dev = await Device.connect(gw.port)
    upload = vectors[0]["wire"].encode()
    await dev.send(b"".join(wires(vectors, PLATFORM_ONLY)) + upload)
    replies = await dev.wait_replies(1)
    await asyncio.sleep(0.3)
    assert replies == [vectors[1]["wire"].encode()]  # only the upload is answered
    await dev.close()
    _, _, _, frames = await fetch_tables(clean_pg)
    assert [(f["cn"], f["ok"], f["reason"]) for f in frames] == [
        ("1012", False, "platform_only"),
        ("2011", True, None),
    ]
    samples = await scrape(gw.metrics_port)
    assert metric(samples, "hj212_rejects_total", reason="platform_only") == 1


def _upload(value: str, *, qn: str = "20240101120000000", flag: int = 5) -> bytes:
    return frame(
        f"QN={qn};ST=32;CN=2011;PW=123456;MN=88888880000001;Flag={flag};"
        f"CP=&&DataTime=20240101120000;w01018-Rtd={value},w01018-Flag=N&&"
    )


async def test_resend_adds_no_rows_and_a_change_bumps_revision(
    clean_pg: str, start_gateway: Any
) -> None:
    gw = await start_gateway(gateway_settings({"dsn": clean_pg}))
    dev = await Device.connect(gw.port)
    for n, value in enumerate(["35.2", "35.2", "35.2", "36.0", "36.0"], start=1):
        await dev.send(_upload(value))
        assert len(await dev.wait_replies(n)) == n  # each resend is answered
    await dev.close()
    conn = await asyncpg.connect(clean_pg)
    try:
        rows = await conn.fetch("SELECT rtd, revision FROM hj212.reading")
        frames = await conn.fetchval("SELECT count(*) FROM hj212.frame")
    finally:
        await conn.close()
    assert [(r["rtd"], r["revision"]) for r in rows] == [(36.0, 1)]  # one change
    assert frames == 5


async def test_metrics_move_as_predicted(clean_pg: str, start_gateway: Any) -> None:
    gw = await start_gateway(gateway_settings({"dsn": clean_pg}))
    good = [_upload("1.0", qn=f"2024010112000000{i}") for i in range(3)]
    bad_crc = good[0][:-6] + b"0000\r\n"
    lower = _upload("2.5", qn="20240101120000009")
    lower = lower[:-6] + lower[-6:-2].lower() + b"\r\n"
    dev = await Device.connect(gw.port)
    payload = b"junk" + b"".join(good) + bad_crc + lower
    await dev.send(payload)
    await dev.wait_replies(4)
    await asyncio.sleep(0.3)
    await dev.close()
    await asyncio.sleep(0.1)
    s = await scrape(gw.metrics_port)
    assert metric(s, "hj212_frames_total", cn="2011", version="2017", result="accepted") == 4
    assert metric(s, "hj212_rejects_total", reason="crc_mismatch") == 1
    assert metric(s, "hj212_rejects_total", reason="garbage") == 1
    assert metric(s, "hj212_quirks_total", quirk="crc_lower") == 1
    assert metric(s, "hj212_replies_total", cn="9014") == 4
    assert metric(s, "hj212_bytes_received_total") == len(payload)
    assert metric(s, "hj212_bytes_sent_total") == sum(len(r) for r in dev.replies)
    assert metric(s, "hj212_reply_latency_seconds_count") == 4
    assert metric(s, "hj212_connections_accepted_total") == 1
    assert metric(s, "hj212_connections_closed_total", reason="peer_closed") == 1
    assert metric(s, "hj212_rows_written_total", table="reading") >= 1


async def test_replay_from_the_archive(clean_pg: str, start_gateway: Any) -> None:
    """``replay --from-db`` sends archived frames byte for byte and waits for the replies."""
    vectors = load_vectors()
    gw = await start_gateway(gateway_settings({"dsn": clean_pg}))
    dev = await Device.connect(gw.port)
    await dev.send(b"".join(wires(vectors, [1, 5, 6])))  # MN ...A001, all ask for a reply
    assert len(await dev.wait_replies(3)) == 3
    await dev.close()
    await asyncio.sleep(0.3)

    def replay() -> tuple[int, str]:
        import contextlib
        import io

        from gateway.cli import main

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(
                [
                    "replay", "--from-db", "--mn", "88888880000000000000A001",
                    "--since", "2000-01-01T00:00", "--dsn", clean_pg,
                    "--to", f"127.0.0.1:{gw.port}", "--json",
                ]
            )  # fmt: skip
        return code, out.getvalue()

    code, printed = await asyncio.to_thread(replay)
    assert code == 0
    # The in-process gateway's log lines share stdout (structlog is not configured in
    # tests); the summary is the one JSON object line.
    (summary,) = [json.loads(line) for line in printed.splitlines() if line.startswith("{")]
    assert (summary["sent"], summary["expected_replies"], summary["replied"]) == (3, 3, 3)
    _, _, _, frames = await fetch_tables(clean_pg)
    raws = [bytes(f["raw"]) for f in frames]
    assert len(raws) == 6
    assert raws[3:] == raws[:3]  # the same bytes, in the same order
