"""Platform-to-device commands end to end: a scripted DAU over TCP answers the gateway as in
HJ 212-2017 Annex C (protocol.md 6.3, 13 lines 13-23), and every command family ends in the
right state with the right codes; history fetches land in the value tables; timeouts and
retries follow the settings and the device's OverTime/ReCount; two workers never both send
a command; the ``send`` CLI."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from config import Settings
from gateway.app import Gateway
from gateway.cli import main as cli
from tests.e2e.conftest import gateway_settings
from tests.e2e.helpers import frame, metric, naive_crc, scrape

pytestmark = pytest.mark.postgres

TZ = ZoneInfo("Asia/Shanghai")
MN = "88888880000000000000A001"
PW = "123456"
TERMINAL = ("done", "failed", "expired")
# Quick exchanges in tests: a scripted device answers at once.
FAST = {"timeout_s": 5.0, "result_timeout_s": 5.0, "sweep_interval_s": 0.2}


def local(offset_s: float = 0.0) -> datetime:
    return datetime.now(TZ) + timedelta(seconds=offset_s)


def t14(t: datetime) -> str:
    return t.strftime("%Y%m%d%H%M%S")


def qn_of(t: datetime) -> str:
    return t14(t) + f"{t.microsecond // 1000:03d}"


@dataclass
class Cmd:
    """A frame the device received, parsed by the device's own (independent) reader."""

    raw: bytes
    fields: dict[str, str]
    cp: dict[str, str]

    @property
    def qn(self) -> str:
        return self.fields["QN"]

    @property
    def cn(self) -> str:
        return self.fields["CN"]


def parse(line: bytes) -> Cmd:
    assert line.startswith(b"##"), line
    assert line.endswith(b"\r\n"), line
    seg = line[6:-6]
    assert int(line[2:6]) == len(seg), line
    assert line[-6:-2] == b"%04X" % naive_crc(seg), line
    text = seg.decode("utf-8")
    head, _, body = text.partition("CP=&&")
    assert body.endswith("&&"), text
    fields = dict(item.split("=", 1) for item in head.rstrip(";").split(";"))
    cp = dict(item.split("=", 1) for item in re.split("[;,]", body[:-2]) if item)
    return Cmd(line, fields, cp)


Script = Callable[["ScriptedDevice", Cmd], Awaitable[None]]


@dataclass
class ScriptedDevice:
    """A DAU on one TCP connection: uploads on demand, answers commands with ``script``."""

    mn: str = MN
    pw: str = PW
    st: str = "32"
    flag: int = 5
    script: Script | None = None
    commands: list[Cmd] = field(default_factory=list)
    replies: list[Cmd] = field(default_factory=list)
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    errors: list[BaseException] = field(default_factory=list)
    seq: int = 0

    async def connect(self, port: int) -> ScriptedDevice:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self._spawn(self._read())
        return self

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except (asyncio.CancelledError, ConnectionError):
                pass
            except BaseException as exc:  # surfaced by close()
                self.errors.append(exc)

        task = asyncio.get_running_loop().create_task(guarded())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _read(self) -> None:
        assert self.reader is not None
        buf = b""
        while chunk := await self.reader.read(65536):
            buf += chunk
            while b"\r\n" in buf:
                line, buf = buf.split(b"\r\n", 1)
                cmd = parse(line + b"\r\n")
                if cmd.cn in ("9013", "9014"):
                    self.replies.append(cmd)
                else:
                    self.commands.append(cmd)
                    if self.script is not None:
                        self._spawn(self.script(self, cmd))

    async def send(self, segment: str) -> None:
        assert self.writer is not None
        self.writer.write(frame(segment))
        await self.writer.drain()

    def next_qn(self, offset_s: float = 0.0) -> str:
        self.seq += 1
        return t14(local(offset_s)) + f"{self.seq % 1000:03d}"

    async def answer(self, cmd: Cmd, cn: str, cp: str) -> None:
        await self.send(
            f"QN={cmd.qn};ST=91;CN={cn};PW={self.pw};MN={self.mn};Flag={self.flag & ~3};CP=&&{cp}&&"
        )

    async def qn_rtn(self, cmd: Cmd, code: int) -> None:
        await self.answer(cmd, "9011", f"QnRtn={code}")

    async def exe_rtn(self, cmd: Cmd, code: int) -> None:
        await self.answer(cmd, "9012", f"ExeRtn={code}")

    async def data_answer(self, cmd: Cmd, cp: str) -> None:
        """A get-type answer: the request's CN and QN, Flag without A (protocol.md 6.3)."""
        await self.send(
            f"QN={cmd.qn};ST={self.st};CN={cmd.cn};PW={self.pw};MN={self.mn};"
            f"Flag={self.flag & ~3};CP=&&{cp}&&"
        )

    async def upload(
        self, cn: str, cp: str, *, qn: str | None = None, flag: int | None = None, split: str = ""
    ) -> str:
        qn = qn or self.next_qn()
        flag = self.flag if flag is None else flag
        await self.send(
            f"QN={qn};ST={self.st};CN={cn};PW={self.pw};MN={self.mn};Flag={flag};{split}CP=&&{cp}&&"
        )
        return qn

    async def acked_upload(self, cn: str, cp: str, **kw: Any) -> str:
        qn = await self.upload(cn, cp, **kw)
        await self.wait_reply(qn)
        return qn

    async def hello(self) -> None:
        """A real-time upload, acked: the gateway now knows the device on this connection."""
        t = local()
        await self.acked_upload("2011", f"DataTime={t14(t)};w01018-Rtd=35.6,w01018-Flag=N")

    async def wait_reply(self, qn: str, timeout: float = 10.0) -> Cmd:
        async with asyncio.timeout(timeout):
            while True:
                for r in self.replies:
                    if r.qn == qn:
                        return r
                await asyncio.sleep(0.01)

    async def wait_commands(self, count: int, timeout: float = 15.0) -> list[Cmd]:
        async with asyncio.timeout(timeout):
            while len(self.commands) < count:
                await asyncio.sleep(0.01)
        return list(self.commands)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        for task in list(self.tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.errors:
            raise self.errors[0]


# -- database helpers --------------------------------------------------------------------


async def queue(dsn: str, mn: str, cn: int, params: dict[str, str] | None = None, **kw: Any) -> int:
    """Queue a command the way any client may: a plain INSERT."""
    conn = await asyncpg.connect(dsn)
    try:
        ttl = kw.get("ttl_s")
        return int(
            await conn.fetchval(
                "INSERT INTO hj212.command (mn, cn, parameters, requested_by, ttl) "
                "VALUES ($1, $2, $3::jsonb, 'test', make_interval(secs => $4::float8)) "
                "RETURNING id",
                mn,
                cn,
                json.dumps(params or {}),
                ttl,
            )
        )
    finally:
        await conn.close()


async def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def wait_row(
    dsn: str, command_id: int, states: tuple[str, ...] = TERMINAL, timeout: float = 20.0
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            rows = await fetch(
                dsn,
                "SELECT *, parameters::text AS params, answer::text AS answer_text "
                "FROM hj212.command WHERE id = $1",
                command_id,
            )
            if rows and rows[0]["state"] in states:
                row = dict(rows[0])
                row["parameters"] = json.loads(row.pop("params"))
                text = row.pop("answer_text")
                row["answer"] = None if text is None else json.loads(text)
                return row
            await asyncio.sleep(0.05)


def settings(dsn: str, **commands: Any) -> Settings:
    return gateway_settings({"dsn": dsn}, commands={**FAST, **commands})


async def register(dsn: str, mn: str, password: str | None, profile: str | None = None) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO hj212.device (mn, password, profile) VALUES ($1, $2, $3)",
            mn,
            password,
            profile,
        )
    finally:
        await conn.close()


# -- scripts (Annex C flows) ---------------------------------------------------------------

GET_ANSWERS = {
    "1011": lambda: f"SystemTime={t14(local())}",
    "1061": lambda: "RtdInterval=30",
    "1063": lambda: "MinInterval=10",
    "3017": lambda: "PolId=w01018;CstartTime=000000;Ctime=2",
    "3018": lambda: "PolId=w01018;Stime=45",
    "3019": lambda: "PolId=w01018;w01018-SN=COD-2024-0001",
    "3020": lambda: f"DataTime={t14(local())};PolId=w01018;i13004-Info=165.0;i13005-Info=30",
}


async def obliging(dev: ScriptedDevice, cmd: Cmd) -> None:
    """Every request accepted and executed; reads answered; notifications answered 9013."""
    if cmd.cn in ("2012", "2022"):
        await dev.answer(cmd, "9013", "")
        return
    await dev.qn_rtn(cmd, 1)
    answer = GET_ANSWERS.get(cmd.cn)
    if answer is not None:
        await dev.data_answer(cmd, answer())
    await dev.exe_rtn(cmd, 1)


# -- tests -------------------------------------------------------------------------------

FAMILIES: list[tuple[int, dict[str, str]]] = [
    (1000, {"OverTime": "5", "ReCount": "3"}),
    (1011, {}),
    (1012, {}),
    (1061, {}),
    (1062, {"RtdInterval": "60"}),
    (1063, {}),
    (1064, {"MinInterval": "10"}),
    (2011, {}),
    (2012, {}),
    (2021, {}),
    (2022, {}),
    (3011, {"PolId": "w01018"}),
    (3012, {"PolId": "w01018"}),
    (3013, {"PolId": "w01018"}),
    (3014, {"PolId": "w01018"}),
    (3015, {"PolId": "w01018"}),
    (3016, {"PolId": "w01018", "CstartTime": "080000", "Ctime": "2"}),
    (3017, {"PolId": "w01018"}),
    (3018, {"PolId": "w01018"}),
    (3019, {"PolId": "w01018"}),
    (3020, {"PolId": "w01018", "InfoId": "i13004"}),
    (3021, {"PolId": "w01018", "InfoId": "i13005", "i13005-Info": "45"}),
    (1072, {"NewPW": "n3wPass"}),
]


async def test_every_command_family_done(clean_pg: str, start_gateway: Any) -> None:
    gw = await start_gateway(settings(clean_pg))
    await register(clean_pg, MN, "regPW9")  # the registry's password goes into commands
    dev = await ScriptedDevice(script=obliging).connect(gw.port)
    await dev.hello()
    ids = [await queue(clean_pg, MN, cn, params) for cn, params in FAMILIES]
    rows = [await wait_row(clean_pg, i) for i in ids]
    await dev.close()
    for (cn, _), row in zip(FAMILIES, rows, strict=True):
        assert (cn, row["state"], row["reason"]) == (cn, "done", None), row
        assert row["attempts"] == 1
        assert row["worker"] == 0
        notify = cn in (2012, 2022)
        assert row["qn_rtn"] == (None if notify else 1)
        assert row["exe_rtn"] == (None if notify else 1)
        assert row["sent_at"] <= row["finished_at"]
    by_cn = {cn: row for (cn, _), row in zip(FAMILIES, rows, strict=True)}
    # Reads keep what the device answered.
    (answer,) = by_cn[1061]["answer"]["packets"]
    assert answer["cp"] == {"RtdInterval": "30"}
    (answer,) = by_cn[3019]["answer"]["packets"]
    assert answer["data"] == {"w01018": {"SN": "COD-2024-0001"}}
    (answer,) = by_cn[1011]["answer"]["packets"]
    assert len(answer["cp"]["SystemTime"]) == 14
    # One command at a time, in queue order, each a well-formed frame (Q20).
    sent = dev.commands
    assert [int(c.cn) for c in sent] == [cn for cn, _ in FAMILIES]
    assert len({c.qn for c in sent}) == len(sent)
    for c, (_, params) in zip(sent, FAMILIES, strict=True):
        assert re.fullmatch(r"\d{17}", c.qn)
        assert (c.fields["ST"], c.fields["MN"], c.fields["Flag"]) == ("32", MN, "5")
        assert c.fields["PW"] == "regPW9"
        assert {k: v for k, v in c.cp.items() if k in params} == params
    # The standard's order of parameters, and a 1012 with the time of sending.
    by_sent = {c.cn: c for c in sent}
    schedule = by_sent["3016"].raw.split(b"CP=&&")[1]
    assert schedule.startswith(b"PolId=w01018;CstartTime=080000;Ctime=2&&")
    set_time = by_sent["1012"]
    assert re.fullmatch(r"\d{14}", set_time.cp["SystemTime"])
    sent_at = datetime.strptime(set_time.cp["SystemTime"], "%Y%m%d%H%M%S").replace(tzinfo=TZ)
    assert abs((sent_at - local()).total_seconds()) < 600
    # 1072 succeeded: the registry holds the new password; the row no longer shows it.
    (device,) = await fetch(clean_pg, "SELECT password FROM hj212.device WHERE mn = $1", MN)
    assert device["password"] == "n3wPass"
    assert by_cn[1072]["parameters"] == {"NewPW": "***"}
    s = await scrape(gw.metrics_port)
    assert metric(s, "hj212_commands_total", cn="3020", result="done") == 1
    assert metric(s, "hj212_command_frames_sent_total", cn="1012") == 1
    assert metric(s, "hj212_command_answers_total", result="unmatched") == 0


async def test_refusals_and_failures(clean_pg: str, start_gateway: Any) -> None:
    async def script(dev: ScriptedDevice, cmd: Cmd) -> None:
        kind = cmd.cp.get("PolId", "")
        if kind == "w00001":
            await dev.qn_rtn(cmd, 2)  # refused (no 9012 follows)
        elif kind == "w00002":
            await dev.qn_rtn(cmd, 3)  # wrong password (protocol.md 13 line 16)
        elif kind == "w00003":
            await dev.qn_rtn(cmd, 1)
            await dev.exe_rtn(cmd, 2)  # accepted, then failed
        elif cmd.cn == "2061":
            await dev.qn_rtn(cmd, 1)
            await dev.exe_rtn(cmd, 100)  # no data: a complete answer
        else:
            await dev.qn_rtn(cmd, 1)
            await dev.exe_rtn(cmd, 5)  # busy

    gw = await start_gateway(settings(clean_pg))
    dev = await ScriptedDevice(script=script).connect(gw.port)
    await dev.hello()
    day = t14(local(-86_400))
    cases = [
        (3012, {"PolId": "w00001"}, "failed", 2, None, "refused"),
        (3012, {"PolId": "w00002"}, "failed", 3, None, "wrong_password"),
        (3012, {"PolId": "w00003"}, "failed", 1, 2, "execution_failed"),
        (2061, {"BeginTime": day, "EndTime": day}, "done", 1, 100, None),
        (1062, {"RtdInterval": "30"}, "failed", 1, 5, "busy"),
        # Rows no client should have written: refused before anything is sent.
        (9999, {}, "failed", None, None, "invalid"),
        (2061, {"BeginTime": day}, "failed", None, None, "invalid"),
        (1062, {"RtdInterval": "5"}, "failed", None, None, "invalid"),
    ]
    ids = [await queue(clean_pg, MN, cn, params) for cn, params, *_ in cases]
    for command_id, (cn, _, state, qn_rtn, exe_rtn, reason) in zip(ids, cases, strict=True):
        row = await wait_row(clean_pg, command_id)
        assert (cn, row["state"], row["qn_rtn"], row["exe_rtn"], row["reason"]) == (
            cn,
            state,
            qn_rtn,
            exe_rtn,
            reason,
        )
    assert len(dev.commands) == 5  # the invalid ones never left
    await dev.close()
    s = await scrape(gw.metrics_port)
    assert metric(s, "hj212_commands_total", cn="3012", result="failed") == 3
    assert metric(s, "hj212_commands_total", cn="other", result="failed") == 1


def history_script(parts_per_slot: list[int], slots: list[str]) -> Script:
    """Annex C history flow: 9011, then per slot one upload or a split (Flag=7, PNUM/PNO,
    a fresh QN per part), each waiting for its 9014, then 9012 with the request's QN."""

    async def script(dev: ScriptedDevice, cmd: Cmd) -> None:
        await dev.qn_rtn(cmd, 1)
        cn = cmd.cn
        for slot, parts in zip(slots, parts_per_slot, strict=True):
            items = history_items(cn, parts)
            for pno, part in enumerate(items, start=1):
                split = f"PNUM={parts};PNO={pno};" if parts > 1 else ""
                await dev.acked_upload(
                    cn, f"DataTime={slot};{part}", flag=7 if parts > 1 else 5, split=split
                )
        await dev.exe_rtn(cmd, 1)

    return script


def history_items(cn: str, parts: int) -> list[str]:
    if cn == "2041":
        items = ["SB1-RT=23.50", "SB2-RT=0.00"]
    else:
        items = [
            "w00000-Cou=40.12,w00000-Min=10.90,w00000-Avg=11.14,w00000-Max=11.60,w00000-Flag=N",
            "w01018-Cou=1.304,w01018-Min=32.5,w01018-Avg=32.5,w01018-Max=32.5,w01018-Flag=N",
        ]
    if parts == 1:
        return [";".join(items)]
    return items[:parts]


async def test_history_fetch_split_uploads_land_in_readings(
    clean_pg: str, start_gateway: Any
) -> None:
    slots = ["20240315000000", "20240315010000", "20240315020000"]
    gw = await start_gateway(settings(clean_pg))
    dev = await ScriptedDevice(script=history_script([2, 1, 2], slots)).connect(gw.port)
    await dev.hello()
    command_id = await queue(clean_pg, MN, 2061, {"BeginTime": slots[0], "EndTime": slots[-1]})
    row = await wait_row(clean_pg, command_id)
    assert (row["state"], row["qn_rtn"], row["exe_rtn"]) == ("done", 1, 1)
    assert row["answer"] == {
        "uploads": 5,
        "records": 5,
        "first_data_time": slots[0],
        "last_data_time": slots[-1],
    }
    # Each part got its own 9014 (its own QN), as protocol.md 13 lines 20-22.
    (request,) = dev.commands
    assert request.cp == {"BeginTime": slots[0], "EndTime": slots[-1]}
    parts = [r for r in dev.replies if r.cn == "9014"][1:]  # after the hello's
    assert len(parts) == 5
    assert len({r.qn for r in parts}) == 5
    assert request.qn not in {r.qn for r in parts}
    readings = await fetch(
        clean_pg,
        "SELECT data_time, code, avg FROM hj212.reading WHERE mn = $1 AND cn = 2061 "
        "ORDER BY data_time, code",
        MN,
    )
    assert len(readings) == 6  # 3 hours x 2 codes, split or not
    assert {r["code"] for r in readings} == {"w00000", "w01018"}
    await dev.close()


async def test_a_history_fetch_is_not_kept_alive_by_the_devices_own_uploads(
    clean_pg: str, start_gateway: Any
) -> None:
    """The device accepts the request, sends none of the requested hours and no 9012, but
    goes on with its own hourly 2061s (fresh QNs, DataTimes outside the window): those do
    not count as the fetch's progress, and the fetch ends when its idle timeout runs out."""
    now_hour = local().replace(minute=0, second=0, microsecond=0)

    async def own_schedule_only(dev: ScriptedDevice, cmd: Cmd) -> None:
        await dev.qn_rtn(cmd, 1)
        for i in range(8):
            slot = t14(now_hour - timedelta(hours=i))
            await dev.acked_upload("2061", f"DataTime={slot};w01018-Avg=1.{i},w01018-Flag=N")
            await asyncio.sleep(0.3)

    gw = await start_gateway(settings(clean_pg, history_idle_timeout_s=1.0))
    dev = await ScriptedDevice(script=own_schedule_only).connect(gw.port)
    await dev.hello()
    window = {"BeginTime": "20240315000000", "EndTime": "20240315060000"}
    command_id = await queue(clean_pg, MN, 2061, window)
    row = await wait_row(clean_pg, command_id)
    # "no_result", not "incomplete": none of the device's own uploads counted as the
    # fetch's data (each would also have bought the fetch another idle period).
    assert (row["state"], row["reason"], row["qn_rtn"]) == ("failed", "no_result", 1)
    await dev.close()


@pytest.mark.parametrize("cn", ["2031", "2041", "2051"])
async def test_other_history_fetches(clean_pg: str, start_gateway: Any, cn: str) -> None:
    slots = ["20240314000000", "20240315000000"]
    gw = await start_gateway(settings(clean_pg))
    dev = await ScriptedDevice(script=history_script([1, 1], slots)).connect(gw.port)
    await dev.hello()
    command_id = await queue(clean_pg, MN, int(cn), {"BeginTime": slots[0], "EndTime": slots[1]})
    row = await wait_row(clean_pg, command_id)
    assert row["state"] == "done"
    assert row["answer"]["uploads"] == 2
    table = "device_status" if cn == "2041" else "reading"
    stored = await fetch(
        clean_pg, f"SELECT count(*) AS n FROM hj212.{table} WHERE mn = $1 AND cn = $2", MN, int(cn)
    )
    assert stored[0]["n"] == 4
    await dev.close()


async def test_silence_retries_and_late_answers(clean_pg: str, start_gateway: Any) -> None:
    answered: dict[str, int] = {}

    async def script(dev: ScriptedDevice, cmd: Cmd) -> None:
        seen = answered[cmd.qn] = answered.get(cmd.qn, 0) + 1
        mode = cmd.cp.get("PolId") or cmd.cn
        if mode == "1000" or (mode == "w00002" and seen == 2):
            await obliging(dev, cmd)
        elif mode == "w00003":  # accepted, then never a result
            await dev.qn_rtn(cmd, 1)

    gw = await start_gateway(
        settings(clean_pg, timeout_s=0.3, retries=2, result_timeout_s=0.5, long_running_cns=[])
    )
    dev = await ScriptedDevice(script=script).connect(gw.port)
    await dev.hello()
    silent = await queue(clean_pg, MN, 3012, {"PolId": "w00001"})
    row = await wait_row(clean_pg, silent)
    assert (row["state"], row["reason"], row["attempts"], row["qn_rtn"]) == (
        "failed",
        "no_answer",
        3,
        None,
    )
    copies = [c.raw for c in dev.commands]
    assert len(copies) == 3
    assert len({parse(c).qn for c in copies}) == 1
    # An answer after the end changes nothing; it is counted as late.
    late = parse(copies[0])
    await dev.qn_rtn(late, 1)
    await dev.exe_rtn(late, 1)

    async def late_answers() -> float:
        return metric(await scrape(gw.metrics_port), "hj212_command_answers_total", result="late")

    async with asyncio.timeout(10):
        while await late_answers() < 2:
            await asyncio.sleep(0.05)
    assert (await wait_row(clean_pg, silent))["state"] == "failed"

    second = await queue(clean_pg, MN, 3012, {"PolId": "w00002"})
    row = await wait_row(clean_pg, second)
    assert (row["state"], row["attempts"], row["qn_rtn"], row["exe_rtn"]) == ("done", 2, 1, 1)

    no_result = await queue(clean_pg, MN, 3012, {"PolId": "w00003"})
    row = await wait_row(clean_pg, no_result)
    assert (row["state"], row["reason"], row["qn_rtn"], row["attempts"]) == (
        "failed",
        "no_result",
        1,
        1,
    )

    # The device's own OverTime / ReCount, once set with a 1000, replace the defaults.
    timing = await queue(clean_pg, MN, 1000, {"OverTime": "1", "ReCount": "1"})
    assert (await wait_row(clean_pg, timing))["state"] == "done"
    before = len(dev.commands)
    silent2 = await queue(clean_pg, MN, 3012, {"PolId": "w00004"})
    row = await wait_row(clean_pg, silent2)
    assert (row["state"], row["attempts"]) == ("failed", 2)
    assert len(dev.commands) - before == 2
    await dev.close()


async def test_offline_device_gets_its_command_on_connect_or_it_expires(
    clean_pg: str, start_gateway: Any
) -> None:
    gw = await start_gateway(settings(clean_pg))
    waiting = await queue(clean_pg, MN, 1011, {})
    stale = await queue(clean_pg, "88888880000000000000A009", 1011, {}, ttl_s=0.5)
    await asyncio.sleep(0.3)
    assert (await wait_row(clean_pg, waiting, ("queued",)))["attempts"] == 0
    dev = await ScriptedDevice(script=obliging).connect(gw.port)
    await dev.hello()
    assert (await wait_row(clean_pg, waiting))["state"] == "done"
    row = await wait_row(clean_pg, stale)
    assert (row["state"], row["reason"], row["attempts"]) == ("expired", "ttl", 0)
    await dev.close()
    s = await scrape(gw.metrics_port)
    assert metric(s, "hj212_commands_total", cn="1011", result="expired") == 1


async def test_two_workers_never_both_send(clean_pg: str, start_gateway: Any) -> None:
    cfg = settings(clean_pg, sweep_interval_s=0.1)
    gw0 = await start_gateway(cfg)
    gw1 = Gateway(cfg, worker=1)
    await gw1.start()
    try:
        dev = await ScriptedDevice(script=obliging).connect(gw1.port)
        await dev.hello()
        ids = [await queue(clean_pg, MN, 1061, {}) for _ in range(6)]
        rows = [await wait_row(clean_pg, i) for i in ids]
        assert {(r["state"], r["worker"], r["attempts"]) for r in rows} == {("done", 1, 1)}
        assert len(dev.commands) == 6
        assert len({c.qn for c in dev.commands}) == 6
        s0, s1 = await scrape(gw0.metrics_port), await scrape(gw1.metrics_port)
        assert metric(s0, "hj212_command_frames_sent_total", cn="1061") == 0
        assert metric(s1, "hj212_command_frames_sent_total", cn="1061") == 6
        await dev.close()
        # The device moves to worker 0, which now sends its commands.
        dev = await ScriptedDevice(script=obliging).connect(gw0.port)
        await dev.hello()
        moved = await queue(clean_pg, MN, 1061, {})
        row = await wait_row(clean_pg, moved)
        assert (row["state"], row["worker"]) == ("done", 0)
        await dev.close()
    finally:
        await gw1.stop()


async def test_device_time_request_is_answered_with_1012(clean_pg: str, start_gateway: Any) -> None:
    gw = await start_gateway(settings(clean_pg, answer_time_requests=True))
    dev = await ScriptedDevice(script=obliging).connect(gw.port)
    qn = await dev.upload("1013", "")  # protocol.md 13 line 17
    reply = await dev.wait_reply(qn)
    assert reply.cn == "9013"
    assert reply.fields["Flag"] == "4"
    (cmd,) = await dev.wait_commands(1)
    assert cmd.cn == "1012"
    assert len(cmd.cp["SystemTime"]) == 14
    rows = await fetch(clean_pg, "SELECT id, requested_by FROM hj212.command")
    assert [r["requested_by"] for r in rows] == ["gateway:1013"]
    assert (await wait_row(clean_pg, rows[0]["id"]))["state"] == "done"
    await dev.close()


async def test_password_fallback_and_2005_device(clean_pg: str, start_gateway: Any) -> None:
    """No registry password: the one the device uses now; a 2005 device gets Flag=1."""
    gw = await start_gateway(settings(clean_pg))
    mn = "88888880000001"
    dev = await ScriptedDevice(mn=mn, pw="old-pw", flag=1, script=obliging).connect(gw.port)
    await dev.hello()
    row = await wait_row(
        clean_pg, await queue(clean_pg, mn, 1012, {"SystemTime": "20240315110000"})
    )
    (cmd,) = dev.commands
    assert (cmd.fields["PW"], cmd.fields["Flag"], cmd.cp) == (
        "old-pw",
        "1",
        {"SystemTime": "20240315110000"},
    )
    assert row["state"] == "done"
    await dev.close()


def send_cli(*args: str) -> tuple[int, str]:
    """``hj212-gateway send`` in this process; its output without the in-process gateway's
    log lines (they go to the same, redirected, stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = cli(["send", *args])
    lines = [x for x in out.getvalue().splitlines() if not re.match(r"\d{4}-\d\d-\d\d ", x)]
    return code, "\n".join(lines)


async def test_send_cli(clean_pg: str, start_gateway: Any) -> None:
    async def script(dev: ScriptedDevice, cmd: Cmd) -> None:
        if cmd.cn == "1062":
            await dev.qn_rtn(cmd, 2)
        else:
            await obliging(dev, cmd)

    gw = await start_gateway(settings(clean_pg))
    dev = await ScriptedDevice(script=script).connect(gw.port)
    await dev.hello()
    code, out = await asyncio.to_thread(
        send_cli, MN, "1061", "--dsn", clean_pg, "--json", "--wait", "20"
    )
    assert code == 0
    row = json.loads(out)
    assert (row["state"], row["qn_rtn"], row["exe_rtn"], row["cn"]) == ("done", 1, 1, 1061)
    assert row["answer"]["packets"][0]["cp"] == {"RtdInterval": "30"}
    assert row["requested_by"].startswith("cli:")
    code, out = await asyncio.to_thread(
        send_cli, MN, "1062", "RtdInterval=60", "--dsn", clean_pg, "--wait", "20"
    )
    assert code == 1
    assert "failed (refused)" in out
    assert "QnRtn=2" in out
    code, out = await asyncio.to_thread(
        send_cli, MN, "1072", "NewPW=topsecret", "--dsn", clean_pg, "--json", "--wait", "20"
    )
    assert code == 0
    assert "topsecret" not in out
    # Usage errors: nothing queued.
    for bad in (["1062", "RtdInterval=5"], ["9999"], ["12"], ["1062", "RtdInterval"]):
        code, _ = await asyncio.to_thread(send_cli, MN, *bad, "--dsn", clean_pg)
        assert code == 2, bad
    # --wait 0 only queues; an offline device's command is then still queued.
    code, out = await asyncio.to_thread(
        send_cli, "OFFLINE", "1011", "--dsn", clean_pg, "--wait", "0"
    )
    assert code == 0
    assert "queued" in out
    rows = await fetch(clean_pg, "SELECT count(*) AS n FROM hj212.command")
    assert rows[0]["n"] == 4
    await dev.close()


async def test_sqlite_store_polls(sqlite_path: str, start_gateway: Any) -> None:
    gw = await start_gateway(
        gateway_settings({"sqlite_path": sqlite_path}, commands={"poll_interval_s": 0.1})
    )
    dev = await ScriptedDevice(script=obliging).connect(gw.port)
    await dev.hello()
    code, out = await asyncio.to_thread(
        send_cli, MN, "1011", "--sqlite-path", sqlite_path, "--json", "--wait", "20"
    )
    assert code == 0, out
    assert json.loads(out)["state"] == "done"
    (cmd,) = dev.commands
    assert cmd.cn == "1011"
    await dev.close()
