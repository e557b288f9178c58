"""field-quirks.md Q1-Q20, Q22-Q24: each input between two good frames in one stream,
accepted with the right values and quirk or rejected with the right reason, neighbours
intact, in lenient and strict mode, fed whole and byte by byte."""

from __future__ import annotations

from typing import Any

import pytest
from protokit import MN, feed_all, feed_bytewise, good_frame, partial, sandwich, summary

from protocol import (
    CrcVariant,
    Frame,
    FrameBuffer,
    ProtocolError,
    Quirk,
    Rejected,
    RejectReason,
    command,
    decode,
    get_profile,
    reframe,
    reply_for,
)

SEG_352 = (
    "QN=20240101120000000;ST=32;CN=2011;PW=123456;MN=88888880000001;Flag=4;"
    "CP=&&DataTime=20240101120000;w01018-Rtd=35.2,w01018-Flag=N&&"
)

Q1 = b"##0130" + SEG_352.replace("35.2", "32.5").encode() + b"cfc1\r\n"
Q2_SHORT = b"##0130" + SEG_352.replace("35.2", "32.1").encode() + b"CC0\r\n"
Q2_GOOD = b"##0130" + SEG_352.replace("35.2", "32.1").encode() + b"0CC0\r\n"
Q3_MODBUS = b"##0130" + SEG_352.encode() + b"E7BE\r\n"
Q3_SWAPPED = b"##0130" + SEG_352.encode() + b"BEE7\r\n"
Q4 = b"##0129" + SEG_352.encode() + b"A141\r\n"
Q5 = (
    b"##1075QN=20240101120100000;ST=31;CN=2051;PW=123456;MN=88888880000001;Flag=4;"
    b"CP=&&DataTime=20240101120000;"
    + b";".join(
        b"%s-Min=1.000,%s-Avg=2.000,%s-Max=3.000,%s-Flag=N" % (c, c, c, c)
        for c in (
            b"a21026",
            b"a21002",
            b"a21005",
            b"a34013",
            b"a01011",
            b"a01012",
            b"a01013",
            b"a01014",
            b"a19001",
            b"a00000",
            b"a21024",
            b"a24088",
            b"a05002",
            b"a24087",
            b"a25002",
        )
    )
    + b"&&EA41\r\n"
)
Q6 = (
    b"##0130" + SEG_352.encode() + b"A141\r\n"
    b"##0130QN=20240101120030000;ST=32;CN=2011;PW=123456;MN=88888880000001;Flag=4;"
    b"CP=&&DataTime=20240101120030;w01018-Rtd=35.4,w01018-Flag=N&&3300\r\n"
)
Q7_READS = [
    b"##01",
    b"30QN=20240101120000000;ST=32;CN=2011;PW=123456;MN=88888880000001;F",
    b"lag=4;CP=&&DataTime=20240101120000;w01018-Rtd=35.2,w01018-Flag=N&&A141\r\n",
]
Q8_JUNK = b"\x00\x01\x00\x00\x00\x06\x01\x03\x00\x00\x00\r\n"
Q8 = Q8_JUNK + b"##0130" + SEG_352.encode() + b"A141\r\n"
Q9_HEARTBEAT = b"##0049ST=32;CN=9015;PW=123456;MN=88888880000001;CP=&&&&C601\r\n"
Q9_EMPTY = (
    b"##0077QN=20240101120000000;ST=32;CN=2011;PW=123456;MN=88888880000001;Flag=4;CP=&&&&3840\r\n"
)
Q10 = (
    b"##0136ST=32;CN=2011;PW=123456;MN=88888880000001;CP=&&DataTime=20240101120000;"
    b"B01-Rtd=36.91;011-Rtd=231.0,011-Flag=N;060-Rtd=1.803,060-Flag=N&&5E40\r\n"
)
Q11 = (
    b"##0130QN=20260105080000000;ST=32;CN=2011;PW=123456;MN=88888880000001;Flag=9;"
    b"CP=&&DataTime=20260105080000;w01018-Rtd=35.2,w01018-Flag=N&&8801\r\n"
)
Q11_REPLY = (
    b"##0077QN=20260105080000000;ST=91;CN=9014;PW=123456;MN=88888880000001;Flag=8;CP=&&&&9AC1\r\n"
)
Q12_PART2 = (
    b"##0143QN=20240101130000000;ST=32;CN=2061;PW=123456;MN=88888880000001;Flag=7;PNUM=2;PNO=2;"
    b"CP=&&DataTime=20240101120000;w21003-Avg=1.20,w21003-Flag=N&&4B00\r\n"
)
Q12_PART1 = (
    b"##0143QN=20240101130000000;ST=32;CN=2061;PW=123456;MN=88888880000001;Flag=7;PNUM=2;PNO=1;"
    b"CP=&&DataTime=20240101120000;w01018-Avg=35.2,w01018-Flag=N&&6FC0\r\n"
)
Q13 = (
    b"##0133QN=20240101120000000;ST=32;CN=2011;PW=123456;MN=88888880000001;Flag=4;"
    b"CP=&&DataTime=20240101120000123;w01018-Rtd=35.2,w01018-Flag=N&&5440\r\n"
)
Q14 = (
    b"##0183QN=20240101120000000;ST=31;CN=2011;PW=123456;MN=88888880000001;Flag=4;"
    b"CP=&&DataTime=20240101120000;02-Rtd=12.1,02-Flag=N;a21026-Rtd=12.1,a21026-Flag=N;"
    b"a99948-Rtd=452.3,a99948-Flag=N&&A001\r\n"
)
Q15 = (
    b"##0211QN=20240101120000000;ST=21;CN=2011;PW=123456;MN=88888880000001;Flag=5;"
    b"CP=&&DataTime=20240101120000;w01018-SampleTime=20240101115500,w01018-Rtd=35.2,"
    b"w01018-Flag=N;a34013-ZsRtd=12.5,a34013-Rtd=10.1,a34013-Flag=N&&5D80\r\n"
)
Q16 = (
    b"##0195QN=20240101130000000;ST=31;CN=2061;PW=123456;MN=88888880000001;Flag=5;"
    b"CP=&&DataTime=20240101120000;a21026-Min=10.1,a21026-Avg=12.3,a21026-Max=15.0,"
    b"a21026-ZsAvg=14.0,a21026-Cou=1.2,a21026-Flag=N&&2200\r\n"
)
Q17 = (
    b"##0158QN=20240101120000000;ST=22;CN=2011;PW=123456;MN=88888880000001;Flag=4;"
    b"CP=&&DataTime=20240101120000;;a34004-Rtd=20,a34004-Flag=N;a34002-Rtd=31,a34002-Flag=N;&&"
    b"AB41\r\n"
)
Q18_UPLOAD = b"##0130" + SEG_352.replace("Flag=4", "Flag=5").encode() + b"A441\r\n"
Q18_REPLY = (
    b"##0077QN=20240101120000000;ST=91;CN=9014;PW=123456;MN=88888880000001;Flag=4;CP=&&&&3240\r\n"
)
Q20_BAD = (
    b"##81QN=;ST=32;CN=1012;PW=123456;MN=88888880000001;CP=&&SystemTime=20240101120000123&&3240"
)
Q20_GOOD = (
    b"##0102QN=20240101120005000;ST=32;CN=1012;PW=123456;MN=88888880000001;Flag=5;"
    b"CP=&&SystemTime=20240101120005&&B8C1\r\n"
)
Q22 = (
    b"##0130QN=20240101120000000;ST=32;CN=2011;PW=654321;MN=99999990000009;Flag=5;"
    b"CP=&&DataTime=20240101120000;w01018-Rtd=35.2,w01018-Flag=N&&C181\r\n"
)
Q23_SOURCE = (
    b"##0128QN=20240101120000000;ST=39;CN=2011;PW=123456;MN=88888880000001;Flag=4;"
    b"CP=&&DataTime=20240101120000;a34001-Rtd=92,a34001-Flag=N&&E8C1\r\n"
)
Q23_FORWARD = (
    b"##0128QN=20240101120000000;ST=39;CN=2051;PW=123456;MN=88888880000001;Flag=4;"
    b"CP=&&DataTime=20240101120000;a34001-Avg=92,a34001-Flag=N47C0\r\n"
)
Q24 = (
    b"##0162QN=20240101120000000;ST=32;CN=2011;PW=123456;MN=88888880000001;Flag=4;"
    b"CP=&&DataTime=20240101120000;w01001-Rtd=7.10,w01001-Flag=N;w01018-Rtd=035.20,"
    b"w01018-Flag=N&&F9C1\r\n"
)

F = "F"
R = "R"

# input -> (lenient middle, strict middle); a middle entry is ("F", cn, quirks) or
# ("R", reason, crc_variant).
CASES: dict[str, tuple[bytes, list[tuple[Any, ...]], list[tuple[Any, ...]]]] = {
    "Q1 lower-case CRC": (Q1, [(F, "2011", ("crc_lower",))], [(R, "bad_crc_field", "none")]),
    "Q2 3-digit CRC": (Q2_SHORT, [(F, "2011", ("crc_short",))], [(R, "bad_crc_field", "none")]),
    "Q2 padded CRC": (Q2_GOOD, [(F, "2011", ())], [(F, "2011", ())]),
    "Q3 Modbus": (
        Q3_MODBUS,
        [(R, "crc_mismatch", "modbus")],
        [(R, "crc_mismatch", "modbus")],
    ),
    "Q3 Modbus swapped": (
        Q3_SWAPPED,
        [(R, "crc_mismatch", "modbus_swapped")],
        [(R, "crc_mismatch", "modbus_swapped")],
    ),
    "Q4 wrong length": (
        Q4,
        [(F, "2011", ("length_repaired",))],
        [(R, "length_mismatch", "none")],
    ),
    "Q5 oversize": (Q5, [(F, "2051", ("oversize",))], [(R, "too_long", "none")]),
    "Q6 sticky": (Q6, [(F, "2011", ()), (F, "2011", ())], [(F, "2011", ()), (F, "2011", ())]),
    "Q7 split": (b"".join(Q7_READS), [(F, "2011", ())], [(F, "2011", ())]),
    "Q8 junk": (
        Q8,
        [(R, "garbage", "none"), (F, "2011", ())],
        [(R, "garbage", "none"), (F, "2011", ())],
    ),
    "Q9 heartbeat": (
        Q9_HEARTBEAT,
        [(F, "9015", ("missing_qn", "missing_flag"))],
        [(F, "9015", ("missing_qn", "missing_flag"))],
    ),
    "Q9 empty CP": (Q9_EMPTY, [(F, "2011", ())], [(F, "2011", ())]),
    "Q10 no QN/Flag": (
        Q10,
        [(F, "2011", ("missing_qn", "missing_flag"))],
        [(F, "2011", ("missing_qn", "missing_flag"))],
    ),
    "Q11 Flag=9": (Q11, [(F, "2011", ())], [(F, "2011", ())]),
    "Q12 parts out of order": (
        Q12_PART2 + Q12_PART1,
        [(F, "2061", ()), (F, "2061", ())],
        [(F, "2061", ()), (F, "2061", ())],
    ),
    "Q13 DataTime ms": (Q13, [(F, "2011", ("time_ms",))], [(F, "2011", ("time_ms",))]),
    "Q14 mixed codes": (
        Q14,
        [(F, "2011", ("code_alias_collision",))],
        [(F, "2011", ("code_alias_collision",))],
    ),
    "Q15 long keys": (Q15, [(F, "2011", ())], [(F, "2011", ())]),
    "Q16 aggregates": (Q16, [(F, "2061", ())], [(F, "2061", ())]),
    "Q17 empty items": (Q17, [(F, "2011", ("empty_item",))], [(F, "2011", ("empty_item",))]),
    "Q18 upload": (Q18_UPLOAD, [(F, "2011", ())], [(F, "2011", ())]),
    "Q19 duplicate": (
        Q18_UPLOAD + Q18_UPLOAD,
        [(F, "2011", ()), (F, "2011", ())],
        [(F, "2011", ()), (F, "2011", ())],
    ),
    "Q20 malformed command": (
        Q20_BAD,
        [(R, "bad_length_field", "none")],
        [(R, "bad_length_field", "none")],
    ),
    "Q20 good command": (Q20_GOOD, [(F, "1012", ())], [(F, "1012", ())]),
    "Q22 unknown MN": (Q22, [(F, "2011", ())], [(F, "2011", ())]),
    "Q23 source": (Q23_SOURCE, [(F, "2011", ())], [(F, "2011", ())]),
    "Q23 corrupted forward": (
        Q23_FORWARD,
        [(R, "length_mismatch", "none")],
        [(R, "length_mismatch", "none")],
    ),
    "Q24 number text": (Q24, [(F, "2011", ())], [(F, "2011", ())]),
}


def _middle(records: list[Any], lenient: bool) -> list[tuple[Any, ...]]:
    digest = summary(records, lenient=lenient)
    # Neighbours: the good frames before and after are intact, first and last.
    assert digest[0][:3] == (F, "2011", ()), digest
    assert digest[-1][:3] == (F, "2011", ()), digest
    assert records[0].raw == good_frame(1, "11.0")
    assert records[-1].raw == good_frame(2, "22.0")
    return [d[:3] for d in digest[1:-1]]


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("lenient", [True, False], ids=["lenient", "strict"])
def test_field_quirk(name: str, lenient: bool) -> None:
    data, expect_lenient, expect_strict = CASES[name]
    stream = sandwich(data)
    records = feed_all(stream, lenient=lenient)
    assert _middle(records, lenient) == (expect_lenient if lenient else expect_strict)
    # Byte by byte gives the same records.
    assert feed_bytewise(stream, lenient=lenient) == records
    # Every byte is accounted for exactly once, in order.
    position = 0
    for record in records:
        assert record.offset == position
        position += len(record.raw) if isinstance(record, Frame) else record.consumed
    assert position == len(stream)


def _decode_one(data: bytes) -> Any:
    records = feed_all(data)
    assert len(records) == 1, records
    assert isinstance(records[0], Frame), records
    return decode(records[0])


def test_q1_values_and_upper_case_output() -> None:
    packet = _decode_one(Q1)
    assert packet.data == {"w01018": {"Rtd": "32.5", "Flag": "N"}}
    assert Quirk.CRC_LOWER in packet.quirks
    assert reply_for(packet) is None  # Flag=4
    assert command(
        cn="1012", mn=MN, pw="123456", st="32", version="2017", qn="20240101120005000",
        params=[("SystemTime", "20240101120005")],
    ).endswith(b"B8C1\r\n")  # fmt: skip


def test_q2_bad_hex_in_crc_position_is_bad_crc_field() -> None:
    bad = b"##0130" + SEG_352.encode() + b"A1G1\r\n"
    records = feed_all(sandwich(bad))
    assert [r.reason for r in records if isinstance(r, Rejected)] == [RejectReason.BAD_CRC_FIELD]


def test_q3_reframe_and_allow_list() -> None:
    records = feed_all(Q3_MODBUS)
    assert len(records) == 1
    assert isinstance(records[0], Rejected)
    rejected = records[0]
    assert rejected.raw == Q3_MODBUS  # the whole frame, for the archive and reframe
    frame = reframe(rejected)
    assert frame.crc_variant is CrcVariant.MODBUS
    assert frame.raw == Q3_MODBUS
    assert frame.offset == rejected.offset
    assert decode(frame).crc_variant is CrcVariant.MODBUS
    # A device on the allow-list: accepted directly.
    accepted = feed_all(Q3_SWAPPED, accept_variants=frozenset(CrcVariant))
    assert isinstance(accepted[0], Frame)
    assert accepted[0].crc_variant is CrcVariant.MODBUS_SWAPPED
    # The true HJ 212 CRC is not accepted by a Modbus-only device.
    hj = b"##0130" + SEG_352.encode() + b"A141\r\n"
    modbus_only = feed_all(hj, accept_variants=frozenset({CrcVariant.MODBUS}))
    assert isinstance(modbus_only[0], Rejected)
    assert modbus_only[0].crc_variant is CrcVariant.HJ212
    # reframe refuses records that carry no matched variant.
    plain = feed_all(b"##0130" + SEG_352.encode() + b"0000\r\n")[0]
    assert isinstance(plain, Rejected)
    assert plain.reason is RejectReason.CRC_MISMATCH
    with pytest.raises(ProtocolError):
        reframe(plain)


def test_q4_repaired_values() -> None:
    packet = _decode_one(Q4)
    assert packet.data["w01018"]["Rtd"] == "35.2"


def test_q5_cap_is_configurable() -> None:
    framer_cap = 1024 + 12
    records = feed_all(sandwich(Q5), max_frame_bytes=framer_cap)
    reasons = [r.reason for r in records if isinstance(r, Rejected)]
    # The first max_frame_bytes are the too-long frame; the rest of it is skipped as
    # garbage up to the next "##" (the framer never holds more than its cap).
    assert reasons == [RejectReason.TOO_LONG, RejectReason.GARBAGE]
    assert records[1].consumed == framer_cap
    assert isinstance(records[0], Frame)
    assert isinstance(records[-1], Frame)
    packet = _decode_one(Q5)
    assert len(packet.data) == 15


def test_q7_three_reads() -> None:
    framer = FrameBuffer()
    assert framer.feed(Q7_READS[0]) == []
    assert partial(framer)
    assert framer.feed(Q7_READS[1]) == []
    out = framer.feed(Q7_READS[2])
    assert len(out) == 1
    assert isinstance(out[0], Frame)
    assert not partial(framer)
    assert framer.buffered == 0


def test_q8_garbage_record_carries_bytes_and_count() -> None:
    records = feed_all(Q8)
    garbage = records[0]
    assert isinstance(garbage, Rejected)
    assert garbage.reason is RejectReason.GARBAGE
    assert garbage.raw == Q8_JUNK
    assert garbage.consumed == len(Q8_JUNK)
    assert garbage.offset == 0
    assert isinstance(records[1], Frame)
    assert records[1].offset == len(Q8_JUNK)


def test_q9_no_reply_without_flag_and_empty_cp() -> None:
    heartbeat = _decode_one(Q9_HEARTBEAT)
    assert heartbeat.cp == {}
    assert heartbeat.data == {}
    assert heartbeat.records == ()
    assert reply_for(heartbeat) is None
    empty = _decode_one(Q9_EMPTY)
    assert empty.cp == {}
    assert empty.data == {}


def test_q10_version_and_reply_policy() -> None:
    packet = _decode_one(Q10)
    assert packet.version == "2005"
    assert packet.flag is None
    assert packet.qn is None
    assert packet.records[0].data_time == "20240101120000"
    assert reply_for(packet) is None
    assert reply_for(packet, reply_without_qn=True) is None  # A=0 without a Flag
    profile = get_profile("2005")
    assert profile.normalise_code("011", packet.st) == "w01018"
    assert profile.normalise_code("060", packet.st) == "w21003"
    assert profile.normalise_code("B01", packet.st) == "w00000"


def test_q10_reply_without_qn_when_asked() -> None:
    seg = "ST=32;CN=2011;PW=123456;MN=88888880000001;Flag=5;CP=&&DataTime=20240101120000&&"
    from protocol import encode_frame

    packet = _decode_one(encode_frame(seg))
    assert reply_for(packet) is None
    reply = reply_for(packet, reply_without_qn=True)
    assert reply is not None
    assert reply.startswith(b"##0056ST=91;CN=9014;PW=123456;MN=88888880000001;Flag=4;CP=&&&&")


def test_q11_reply_mirrors_2025_bits() -> None:
    packet = _decode_one(Q11)
    assert packet.version == "2025"
    assert packet.ack_requested
    assert reply_for(packet) == Q11_REPLY


def test_q11_unknown_version_parsed_not_acked() -> None:
    from protocol import encode_frame

    packet = _decode_one(encode_frame(SEG_352.replace("Flag=4", "Flag=13")))
    assert packet.version == "v3"
    assert Quirk.UNKNOWN_VERSION in packet.quirks
    assert reply_for(packet) is None
    reply = reply_for(packet, reply_unknown_version=True)
    assert reply is not None
    assert b";Flag=12;" in reply


def test_q11_2005_flag_one_reply_flag_zero() -> None:
    from protocol import encode_frame

    packet = _decode_one(encode_frame(SEG_352.replace("Flag=4", "Flag=1")))
    reply = reply_for(packet)
    assert reply is not None
    assert b";Flag=0;CP=&&&&" in reply


def test_q12_each_part_acked_with_its_own_qn() -> None:
    part2 = _decode_one(Q12_PART2)
    part1 = _decode_one(Q12_PART1)
    assert (part2.pnum, part2.pno, part1.pno) == (2, 2, 1)
    assert part2.split
    assert part1.split
    for part in (part2, part1):
        reply = reply_for(part)
        assert reply is not None
        assert b"QN=20240101130000000;ST=91;CN=9014" in reply
    assert part1.records[0].data_time == part2.records[0].data_time


def test_q13_bad_time_lengths_rejected() -> None:
    from protocol import encode_frame

    packet = _decode_one(Q13)
    assert packet.records[0].data_time_us is not None
    assert packet.records[0].data_time_us % 1_000_000 == 123_000
    for bad in ("202401011200001", "2024010112000", "20241301120000", "20240101250000"):
        with pytest.raises(ProtocolError) as info:
            _decode_one(encode_frame(SEG_352.replace("20240101120000;", bad + ";")))
        assert info.value.reason is RejectReason.BAD_TIME


def test_q14_codes_kept_as_received_and_normalised() -> None:
    packet = _decode_one(Q14)
    assert set(packet.data) == {"02", "a21026", "a99948"}
    profile = get_profile("2017")
    assert profile.normalise_code("02", "31") == "a21026"
    assert profile.normalise_code("a99948", "31") == "a99948"  # 2017-shaped, unknown
    assert profile.normalise_code("zz", "31") is None


def test_q15_long_keys_intact() -> None:
    packet = _decode_one(Q15)
    assert packet.data["w01018"]["SampleTime"] == "20240101115500"
    assert packet.data["a34013"] == {"ZsRtd": "12.5", "Rtd": "10.1", "Flag": "N"}
    from protocol import encode_frame

    with pytest.raises(ProtocolError) as info:
        _decode_one(
            encode_frame(SEG_352.replace("w01018-Rtd", "w01018-SampleTime=2024,w01018-Rtd"))
        )
    assert info.value.reason is RejectReason.BAD_TIME


def test_q16_aggregates_and_reply() -> None:
    packet = _decode_one(Q16)
    assert packet.data["a21026"] == {
        "Min": "10.1", "Avg": "12.3", "Max": "15.0", "ZsAvg": "14.0", "Cou": "1.2", "Flag": "N",
    }  # fmt: skip
    reply = reply_for(packet)
    assert reply is not None
    assert b"CN=9014" in reply


def test_q17_no_empty_keys() -> None:
    packet = _decode_one(Q17)
    assert "" not in packet.data
    assert "" not in packet.cp
    assert set(packet.data) == {"a34004", "a34002"}


def test_q18_reply_is_correct() -> None:
    assert reply_for(_decode_one(Q18_UPLOAD)) == Q18_REPLY


def test_q19_both_copies_replied() -> None:
    records = feed_all(Q18_UPLOAD + Q18_UPLOAD)
    replies = [reply_for(decode(r)) for r in records if isinstance(r, Frame)]
    assert replies == [Q18_REPLY, Q18_REPLY]


def test_q20_encoder_builds_the_good_command_and_refuses_the_bad() -> None:
    built = command(
        cn="1012", mn=MN, pw="123456", st="32", version="2017", qn="20240101120005000",
        params=[("SystemTime", "20240101120005")],
    )  # fmt: skip
    assert built == Q20_GOOD
    with pytest.raises(ProtocolError) as info:
        command(
            cn="1012", mn=MN, pw="123456", st="32", version="2017", qn="20240101120005000",
            params=[("SystemTime", "20240101120000123")],
        )  # fmt: skip
    assert info.value.reason is RejectReason.BAD_TIME
    with pytest.raises(ProtocolError):
        command(cn="1012", mn=MN, pw="123456", st="32", version="2017", qn="",
                params=[("SystemTime", "20240101120005")])  # fmt: skip


def test_q22_decodes_for_the_auth_layer() -> None:
    packet = _decode_one(Q22)
    assert (packet.mn, packet.pw) == ("99999990000009", "654321")


def test_q23_forward_rejected_source_fine() -> None:
    records = feed_all(Q23_FORWARD)
    assert [r.reason for r in records] == [RejectReason.LENGTH_MISMATCH]
    assert records[0].raw == Q23_FORWARD


def test_q24_raw_text_survives() -> None:
    packet = _decode_one(Q24)
    assert packet.data["w01001"]["Rtd"] == "7.10"
    assert packet.data["w01018"]["Rtd"] == "035.20"
    assert packet.raw == Q24
