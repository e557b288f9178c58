"""decode_segment: header grammar and tolerances, CP tokenising, times, errors; values."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import (
    ProtocolError,
    Quirk,
    RejectReason,
    decode_segment,
    packet_to_json,
    parse_number,
    parse_time_us,
)

BASE = "QN=20240101120000000;ST=32;CN=2011;PW=123456;MN=88888880000001;Flag=5;"


def seg(text: str) -> bytes:
    return text.encode("utf-8")


def test_header_in_any_order_with_extra_keys() -> None:
    packet = decode_segment(
        seg("QN=1;PNUM=2;PNO=1;ST=31;CN=2051;PW=x;MN=m;Flag=7;RF=1;CP=&&DataTime=20240101000000&&")
    )
    assert (packet.st, packet.cn, packet.pnum, packet.pno, packet.split) == (
        "31",
        "2051",
        2,
        1,
        True,
    )
    assert packet.header["RF"] == "1"


def test_standard_example_tolerances() -> None:
    """protocol.md 3.3: spaces, ',' in the header, Flag=5CP=&&, CP=&& &&."""
    packet = decode_segment(
        seg(
            "QN=20240101120000534,ST=32;CN=3020;PW=1;MN=m;Flag=5CP=&& PolId=w01018,i12003-Info =0&&"
        )
    )
    assert packet.cp == {"PolId": "w01018"}
    assert packet.data == {"i12003": {"Info": "0"}}
    assert packet.flag == 5
    assert set(packet.quirks) >= {
        Quirk.HEADER_COMMA, Quirk.HEADER_NO_SEMICOLON, Quirk.WHITESPACE,
    }  # fmt: skip
    with pytest.raises(ProtocolError) as info:
        decode_segment(seg("QN=1,ST=32;CN=3020;PW=1;MN=m;Flag=5;CP=&&&&"), lenient=False)
    assert info.value.reason is RejectReason.BAD_SEGMENT
    with pytest.raises(ProtocolError):
        decode_segment(seg("QN=1;ST=32;CN=3020;PW=1;MN=m;Flag=5CP=&&&&"), lenient=False)
    blank = decode_segment(seg(BASE + "CP=&& &&"))
    assert blank.cp == {}
    assert blank.data == {}


def test_log_text_keeps_separators() -> None:
    packet = decode_segment(
        seg(
            BASE + "CP=&&DataTime=20240101120000;i11001-Info=//a;b,c=d 中文 http://x//;"
            "i12001-Info=1&&"
        )
    )
    assert packet.data["i11001"]["Info"] == "a;b,c=d 中文 http://x"
    assert packet.data["i12001"]["Info"] == "1"


def test_multiple_datatime_makes_records() -> None:
    packet = decode_segment(
        seg(
            BASE + "CP=&&DataTime=20240101120000;w01018-Rtd=1;DataTime=20240101120100;"
            "w01018-Rtd=2;w21003-Rtd=3&&"
        )
    )
    assert Quirk.MULTIPLE_DATATIME in packet.quirks
    assert [r.data_time for r in packet.records] == ["20240101120000", "20240101120100"]
    assert packet.records[0].data == {"w01018": {"Rtd": "1"}}
    assert packet.records[1].data == {"w01018": {"Rtd": "2"}, "w21003": {"Rtd": "3"}}
    assert packet.data == {"w01018": {"Rtd": "2"}, "w21003": {"Rtd": "3"}}
    assert packet.records[1].data_time_us == parse_time_us("20240101120100")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("QN=1;ST=32;PW=1;MN=m;Flag=5;CP=&&&&", RejectReason.MISSING_FIELD),
        ("QN=1;ST=32;CN=2011;PW=1;Flag=5;CP=&&&&", RejectReason.MISSING_FIELD),
        ("QN=1;ST=32;CN=;PW=1;MN=m;Flag=5;CP=&&&&", RejectReason.MISSING_FIELD),
        ("QN=1;ST=32;CN=2011;PW=1;MN=m;Flag=x;CP=&&&&", RejectReason.BAD_FLAG),
        ("QN=1;ST=32;CN=2011;PW=1;MN=m;Flag=256;CP=&&&&", RejectReason.BAD_FLAG),
        ("QN=1;ST=32;CN=2011;PW=1;MN=m;Flag=7;PNUM=a;PNO=1;CP=&&&&", RejectReason.BAD_PNUM),
        ("QN=1;ST=32;CN=2011;PW=1;MN=m;Flag=7;PNUM=12345;PNO=1;CP=&&&&", RejectReason.BAD_PNUM),
        ("QN=1;ST=32;CN=2011;PW=1;MN=m;Flag=5", RejectReason.BAD_SEGMENT),
        ("QN=1;ST=32;CN=2011;PW=1;MN=m;Flag=5;CP=&&DataTime=1", RejectReason.BAD_SEGMENT),
        ("QN=1;ST;CN=2011;PW=1;MN=m;Flag=5;CP=&&&&", RejectReason.BAD_SEGMENT),
        ("QN=1;ST=32;CN=2011;PW=1;MN=m;Flag=5;CP=&&abc&&", RejectReason.BAD_SEGMENT),
        ("QN=1;ST=32;CN=2011;PW=1;MN=m;Flag=5;CP=&&=1&&", RejectReason.BAD_SEGMENT),
        ("QN=1;ST=32;CN=2011;PW=1;MN=m;Flag=5;CP=&&-Rtd=1&&", RejectReason.BAD_SEGMENT),
        ("QN=1;ST=32;CN=2011;PW=1;MN=m;Flag=5;CP=&&DataTime=&&", RejectReason.BAD_TIME),
        (
            "QN=1;ST=32;CN=2011;PW=1;MN=m;Flag=5;CP=&&DataTime=20240230000000&&",
            RejectReason.BAD_TIME,
        ),
        ("QN=1;ST=32;CN=1012;PW=1;MN=m;Flag=5;CP=&&SystemTime=2024&&", RejectReason.BAD_TIME),
        ("QN=1;ST=32;CN=2061;PW=1;MN=m;Flag=5;CP=&&BeginTime=x;EndTime=y&&", RejectReason.BAD_TIME),
        # Years before 1970: corruption, and no store can hold year 1 after the offset.
        (
            "QN=1;ST=32;CN=2011;PW=1;MN=m;Flag=5;CP=&&DataTime=00010101000000&&",
            RejectReason.BAD_TIME,
        ),
        (
            "QN=1;ST=32;CN=2011;PW=1;MN=m;Flag=5;CP=&&DataTime=19691231235959&&",
            RejectReason.BAD_TIME,
        ),
        # CN is a code of up to four digits (the stores keep it as an integer).
        ("QN=1;ST=32;CN=99999999999;PW=1;MN=m;Flag=5;CP=&&&&", RejectReason.BAD_CN),
        ("QN=1;ST=32;CN=20A1;PW=1;MN=m;Flag=5;CP=&&&&", RejectReason.BAD_CN),
        ("QN=1;ST=32;CN=２０１１;PW=1;MN=m;Flag=5;CP=&&&&", RejectReason.BAD_CN),
    ],
)
def test_errors(text: str, reason: RejectReason) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_segment(seg(text))
    assert info.value.reason is reason


def test_empty_field_time_is_null_not_error() -> None:
    packet = decode_segment(
        seg(BASE + "CP=&&DataTime=20240101120000;w01018-SampleTime=,w01018-Cou=&&")
    )
    assert packet.data["w01018"] == {"SampleTime": "", "Cou": ""}
    assert packet_to_json(packet)["data"] == {"w01018": {"SampleTime": None, "Cou": None}}


def test_invalid_encoding() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_segment(b"QN=1;ST=32;CN=2011;PW=1;MN=m;CP=&&x=\xff\xff\xff&&")
    assert info.value.reason is RejectReason.BAD_ENCODING


@pytest.mark.parametrize(
    "segment",
    [
        b"QN=1;ST=32;CN=2011;PW=1;MN=m\x00;Flag=5;CP=&&&&",
        b"QN=1;ST=32;CN=2011;PW=1;MN=m;Flag=5;CP=&&w01018-Rtd=1\x00&&",
        b"QN=1;ST=32;CN=3020;PW=1;MN=m;Flag=5;CP=&&i12001-Info=//a\x00b//&&",
    ],
)
def test_a_nul_byte_anywhere_is_bad_encoding(segment: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_segment(segment)
    assert info.value.reason is RejectReason.BAD_ENCODING


def test_year_1970_is_the_earliest_time() -> None:
    packet = decode_segment(seg(BASE + "CP=&&DataTime=19700101000000;w01018-Rtd=1&&"))
    assert packet.records[0].data_time == "19700101000000"


def test_key_case_fallback() -> None:
    packet = decode_segment(seg("qn=1;st=32;cn=2011;pw=1;mn=m;flag=5;CP=&&&&"))
    assert (packet.cn, packet.mn, packet.flag, packet.qn) == ("2011", "m", 5, "1")
    assert Quirk.KEY_CASE in packet.quirks
    assert packet.header["cn"] == "2011"
    with pytest.raises(ProtocolError):
        decode_segment(seg("qn=1;st=32;cn=2011;pw=1;mn=m;flag=5;CP=&&&&"), lenient=False)


def test_unknown_version_strict() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_segment(seg(BASE.replace("Flag=5", "Flag=12") + "CP=&&&&"), lenient=False)
    assert info.value.reason is RejectReason.BAD_FLAG


def test_trailer_after_cp() -> None:
    packet = decode_segment(seg("QN=1;ST=32;CN=9014;PW=1;MN=m;CP=&&&&;Flag=0"))
    assert packet.flag == 0
    with pytest.raises(ProtocolError):
        decode_segment(seg("QN=1;ST=32;CN=9014;PW=1;MN=m;CP=&&&&;Flag=0"), lenient=False)


def test_empty_qn_counts_as_missing() -> None:
    packet = decode_segment(seg("QN=;ST=32;CN=2011;PW=1;MN=m;Flag=4;CP=&&&&"))
    assert packet.qn is None
    assert Quirk.MISSING_QN in packet.quirks


def test_json_view_numbers_text_and_password() -> None:
    packet = decode_segment(
        seg(
            "QN=1;ST=32;CN=1072;PW=secret;MN=m;Flag=5;CP=&&NewPW=other;DataTime=20240101120000;"
            "w01018-Rtd=035.20,w01018-Flag=N,w01018-SampleTime=20240101115500;"
            "i13006-Info=20240315080000;i11001-Info=//log 1//;SB1-RS=1&&"
        )
    )
    view = packet_to_json(packet, raw_values=True)
    assert view["cp"] == {"NewPW": "***", "DataTime": "20240101120000"}
    assert view["data"] == {
        "w01018": {"Rtd": 35.2, "Flag": "N", "SampleTime": "20240101115500"},
        "i13006": {"Info": 20240315080000},
        "i11001": {"Info": "log 1"},
        "SB1": {"RS": 1},
    }
    assert view["data_raw"]["w01018"]["Rtd"] == "035.20"  # type: ignore[index]
    assert "secret" not in repr(view)
    assert "other" not in repr(view)


@pytest.mark.parametrize(
    ("text", "number"),
    [
        (" -035.20 ", -35.2),
        ("+7", 7.0),
        ("0.5", 0.5),
        (".5", 0.5),
        ("1.", 1.0),
        ("", None),
        ("N", None),
        ("nan", None),
        ("inf", None),
        ("1e5", None),
        ("1_0", None),
        ("1-2", None),
        ("٣", None),
        ("--1", None),
    ],
)
def test_parse_number(text: str, number: float | None) -> None:
    assert parse_number(text) == number


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20))
def test_parse_number_never_raises(text: str) -> None:
    parse_number(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20))
def test_parse_time_only_protocol_error(text: str) -> None:
    reason = None
    try:
        parse_time_us(text)
    except ProtocolError as exc:
        reason = exc.reason
    assert reason in (None, RejectReason.BAD_TIME)


def test_parse_time_values() -> None:
    assert parse_time_us("19700101000000") == 0
    assert parse_time_us("19700101000001123") == 1_123_000
    assert parse_time_us("20240229235959") == 1_709_251_199_000_000
    for bad in ("20230229000000", "20240101240000", "20240101006000", "00000101000000", "２０２４"):
        with pytest.raises(ProtocolError):
            parse_time_us(bad)
