"""Encoder: frames, segments, replies for unknown CNs, QNs, and every command of the tables."""

from __future__ import annotations

import pytest
from protokit import feed_all

from protocol import (
    CommandParam,
    Frame,
    ProtocolError,
    QnGenerator,
    RejectReason,
    build_segment,
    command,
    decode,
    decode_segment,
    encode_frame,
    get_profile,
    reply_for,
)

MN = "88888880000000000000A001"
QN = "20240315110000100"


def test_encode_frame_layout() -> None:
    frame = encode_frame("ST=91")
    assert frame == b"##0005ST=91A3C1\r\n"
    assert encode_frame(b"ST=91") == frame
    assert encode_frame("中").startswith(b"##0003")  # bytes, not characters
    assert len(encode_frame("x" * 9999)) == 9999 + 12
    with pytest.raises(ProtocolError) as info:
        encode_frame("x" * 10_000)
    assert info.value.reason is RejectReason.TOO_LONG


def test_build_segment_order_and_omissions() -> None:
    text = build_segment(
        qn=None, st="32", cn="2011", pw="1", mn="m", flag=None,
        cp=[("DataTime", "20240101000000"), ("w01018-Rtd", "1"), ("w01018-Flag", "N"),
            ("w21003-Rtd", "2")],
        pnum=2, pno=1,
    )  # fmt: skip
    assert text == (
        "ST=32;CN=2011;PW=1;MN=m;PNUM=2;PNO=1;"
        "CP=&&DataTime=20240101000000;w01018-Rtd=1,w01018-Flag=N;w21003-Rtd=2&&"
    )
    assert build_segment(qn="1", st="32", cn="9014", pw="1", mn="m", flag=4, cp="") == (
        "QN=1;ST=32;CN=9014;PW=1;MN=m;Flag=4;CP=&&&&"
    )
    assert build_segment(
        qn="1", st="32", cn="9014", pw="1", mn="m", flag=4, cp="CP=&&x=1&&"
    ).endswith(";CP=&&x=1&&")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pw": "a;b"},
        {"mn": "a=b"},
        {"flag": 256},
        {"pnum": 10_000},
        {"cp": [("a;b", "1")]},
        {"cp": [("k", "a;b")]},
        {"cp": [("k", "//a&&b//")]},
        {"cp": [("", "1")]},
    ],
)
def test_build_segment_refuses_separators(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {
        "qn": "1", "st": "32", "cn": "2011", "pw": "1", "mn": "m", "flag": 4, "cp": "",
    }  # fmt: skip
    base.update(kwargs)
    with pytest.raises(ProtocolError):
        build_segment(**base)  # type: ignore[arg-type]


def test_log_value_may_carry_separators() -> None:
    text = build_segment(
        qn="1", st="32", cn="3020", pw="1", mn="m", flag=4, cp=[("i11001-Info", "//a;b,c//")]
    )
    assert decode_segment(text.encode()).data["i11001"]["Info"] == "a;b,c"


def _packet(segment: str) -> object:
    records = feed_all(encode_frame(segment))
    assert isinstance(records[0], Frame)
    return decode(records[0])


def test_reply_for_unknown_cn_uses_datatime() -> None:
    upload_like = _packet(f"QN={QN};ST=32;CN=4321;PW=1;MN=m;Flag=5;CP=&&DataTime=20240101000000&&")
    notify_like = _packet(f"QN={QN};ST=32;CN=4321;PW=1;MN=m;Flag=5;CP=&&&&")
    assert b"CN=9014" in (reply_for(upload_like) or b"")  # type: ignore[arg-type]
    assert b"CN=9013" in (reply_for(notify_like) or b"")  # type: ignore[arg-type]


def test_reply_for_2025_uploads_and_answers() -> None:
    hw = _packet(f"QN={QN};ST=32;CN=1001;PW=1;MN=m;Flag=9;CP=&&i23005-Info=X&&")
    assert b"CN=9013;PW=1;MN=m;Flag=8;" in (reply_for(hw) or b"")  # type: ignore[arg-type]
    answer = _packet(f"QN={QN};ST=32;CN=1011;PW=1;MN=m;Flag=5;CP=&&SystemTime=20240101000000&&")
    assert reply_for(answer) is None  # type: ignore[arg-type]
    heartbeat_2017_bits = _packet(f"QN={QN};ST=32;CN=9015;PW=1;MN=m;Flag=5;CP=&&&&")
    assert b"CN=9013" in (reply_for(heartbeat_2017_bits) or b"")  # type: ignore[arg-type]
    split = _packet(f"QN={QN};ST=32;CN=2061;PW=1;MN=m;Flag=11;PNUM=2;PNO=1;CP=&&&&")
    assert b";Flag=8;" in (reply_for(split) or b"")  # type: ignore[arg-type]


def test_qn_generator_bumps_repeats() -> None:
    generator = QnGenerator()
    assert generator.next(1_710_498_600_100) == "20240315103000100"
    assert generator.next(1_710_498_600_100) == "20240315103000101"
    assert generator.next(1_710_498_600_000) == "20240315103000102"  # clock stepped back
    assert generator.next(1_710_498_601_000) == "20240315103001000"


def _valid_value(param: CommandParam, key: str) -> str:
    kind = param.kind
    if kind == "time14":
        return "20240315000000"
    if kind == "hhmmss":
        return "083000"
    if kind == "int":
        return param.arg.partition("-")[0]
    if kind == "choice":
        return param.arg.split("|")[-1]
    if kind == "code":
        return "w01018"
    if kind == "info":
        return "i13004"
    if kind == "number":
        return "1.5"
    return "abc123"


def _commands() -> list[tuple[str, str]]:
    return [
        (version, cn)
        for version in ("2005", "2017", "2025")
        for cn in sorted(get_profile(version).cns)
        if get_profile(version).command_params(cn) is not None
    ]


COMMANDS = _commands()


def test_command_tables_cover_appendix_c_and_2025() -> None:
    cns_2017 = {cn for version, cn in COMMANDS if version == "2017"}
    assert cns_2017 >= {
        "1000", "1011", "1012", "1061", "1062", "1063", "1064", "1072", "2011", "2012", "2021",
        "2022", "2031", "2041", "2051", "2061", "3011", "3012", "3013", "3014", "3015", "3016",
        "3017", "3018", "3019", "3020", "3021",
    }  # fmt: skip
    cns_2025 = {cn for version, cn in COMMANDS if version == "2025"}
    assert cns_2025 >= cns_2017 | {"1002", "1014", "2013", "2052", "2062", "3022", "3024"}


@pytest.mark.parametrize(("version", "cn"), COMMANDS)
def test_every_command_round_trips(version: str, cn: str) -> None:
    params_spec = get_profile(version).command_params(cn)
    assert params_spec is not None
    params: list[tuple[str, str]] = []
    for param in params_spec:
        if param.param.startswith("*-"):
            code = "i13004" if param.kind == "info_item" else "w01018"
            key = code + param.param[1:]
        else:
            key = param.param
        params.append((key, _valid_value(param, key)))
    frame_bytes = command(cn=cn, mn=MN, pw="123456", st="32", version=version, qn=QN, params=params)
    records = feed_all(frame_bytes)
    assert isinstance(records[0], Frame)
    assert records[0].quirks == ()
    packet = decode(records[0])
    assert (packet.cn, packet.qn, packet.mn, packet.st) == (cn, QN, MN, "32")
    assert packet.version == version
    assert packet.ack_requested
    flat = dict(packet.cp)
    for code, fields in packet.data.items():
        for field, value in fields.items():
            flat[f"{code}-{field}"] = value
    assert flat == dict(params)
    # Every required parameter is enforced.
    for i, param in enumerate(params_spec):
        if param.required:
            with pytest.raises(ProtocolError) as info:
                command(
                    cn=cn, mn=MN, pw="123456", st="32", version=version, qn=QN,
                    params=params[:i] + params[i + 1 :],
                )  # fmt: skip
            assert info.value.reason is RejectReason.MISSING_FIELD


@pytest.mark.parametrize(
    ("cn", "params", "reason"),
    [
        ("1062", [("RtdInterval", "29")], RejectReason.BAD_SEGMENT),
        ("1064", [("MinInterval", "7")], RejectReason.BAD_SEGMENT),
        ("1012", [("SystemTime", "2024031500000")], RejectReason.BAD_TIME),
        (
            "3016",
            [("PolId", "w01018"), ("CstartTime", "250000"), ("Ctime", "2")],
            RejectReason.BAD_TIME,
        ),
        ("3021", [("InfoId", "i13004"), ("i13005-Info", "1")], RejectReason.BAD_SEGMENT),
        ("3021", [("InfoId", "x"), ("x-Info", "1")], RejectReason.BAD_SEGMENT),
        ("1012", [("SystemTime", "20240315000000"), ("Bogus", "1")], RejectReason.BAD_SEGMENT),
        ("1012", [("SystemTime", "20240315000000")] * 2, RejectReason.BAD_SEGMENT),
        ("9014", [], RejectReason.BAD_SEGMENT),
        ("3011", [("PolId", "w01;18")], RejectReason.BAD_SEGMENT),
    ],
)
def test_invalid_commands(cn: str, params: list[tuple[str, str]], reason: RejectReason) -> None:
    with pytest.raises(ProtocolError) as info:
        command(cn=cn, mn=MN, pw="123456", st="32", version="2017", qn=QN, params=params)
    assert info.value.reason is reason


def test_command_header_checks() -> None:
    good = {"cn": "1061", "mn": MN, "pw": "123456", "st": "32", "version": "2017", "qn": QN}
    assert command(**good).startswith(b"##0087QN=20240315110000100;ST=32;CN=1061;")  # type: ignore[arg-type]
    assert b";Flag=4;" in command(**good, ack=False)  # type: ignore[arg-type]
    for change, reason in (
        ({"version": "2019"}, RejectReason.BAD_FLAG),
        ({"qn": "2024"}, RejectReason.BAD_TIME),
        ({"qn": "20241315110000100"}, RejectReason.BAD_TIME),
        ({"mn": ""}, RejectReason.MISSING_FIELD),
        ({"pw": "1;2"}, RejectReason.BAD_SEGMENT),
    ):
        with pytest.raises(ProtocolError) as info:
            command(**{**good, **change})  # type: ignore[arg-type]
        assert info.value.reason is reason


def test_2025_command_flag_and_calibration_type() -> None:
    frame = command(
        cn="3011", mn=MN, pw="123456", st="32", version="2025", qn=QN,
        params=[("PolId", "w01018"), ("CalibrationType", "1")],
    )  # fmt: skip
    assert b";Flag=9;CP=&&PolId=w01018;CalibrationType=1&&" in frame
    with pytest.raises(ProtocolError):
        command(
            cn="3011", mn=MN, pw="123456", st="32", version="2017", qn=QN,
            params=[("PolId", "w01018"), ("CalibrationType", "1")],
        )  # fmt: skip
