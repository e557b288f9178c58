"""Property tests: encode -> decode round trip, chunking independence, and the fuzz
invariant (only ProtocolError escapes; buffers stay bounded; every byte accounted for)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protokit import VECTORS, feed_all
from test_protocol_quirks import CASES

from protocol import (
    Frame,
    FrameBuffer,
    ProtocolError,
    QnGenerator,
    Rejected,
    build_segment,
    decode,
    encode_frame,
    packet_kind,
    packet_to_json,
    parse_time_us,
    rejected_to_json,
    reply_for,
)
from protocol.values import TIME_FIELDS, format_time_ms

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
# Times between 2000 and 2099 as milliseconds since 1970.
TIME_MS = st.integers(946_684_800_000, 4_102_444_799_999)
plain_keys = st.text(alphabet=ALNUM, min_size=1, max_size=12).filter(lambda k: k not in TIME_FIELDS)
codes = st.text(alphabet=ALNUM, min_size=1, max_size=6)
fields = st.text(alphabet=ALNUM, min_size=1, max_size=10).filter(lambda k: k not in TIME_FIELDS)
values = st.text(alphabet=ALNUM + ".+-", max_size=12)
log_text = st.text(
    alphabet=st.sampled_from(list(ALNUM + " ;,=:中文零点校准")), min_size=1, max_size=20
).filter(lambda t: "//" not in t and t.strip() == t)


@st.composite
def packets(draw: Any) -> dict[str, Any]:
    data_time = format_time_ms(draw(TIME_MS))[:14]
    cp_pairs: list[tuple[str, str]] = [("DataTime", data_time)]
    for key, value in draw(st.lists(st.tuples(plain_keys, values), max_size=3)):
        cp_pairs.append((key, value))
    for code, field, value in draw(st.lists(st.tuples(codes, fields, values), max_size=8)):
        cp_pairs.append((f"{code}-{field}", value))
    if draw(st.booleans()):
        cp_pairs.append(("i11001-Info", "//" + draw(log_text) + "//"))
    return {
        "qn": format_time_ms(draw(TIME_MS)) if draw(st.booleans()) else None,
        "st": draw(st.sampled_from(["21", "22", "31", "32", "51", "52", "91"])),
        "cn": draw(st.sampled_from(["2011", "2051", "2061", "3020", "1013", "9015", "4321"])),
        "pw": draw(st.text(alphabet=ALNUM, min_size=1, max_size=24)),
        "mn": draw(st.text(alphabet=ALNUM, min_size=1, max_size=24)),
        "flag": draw(st.one_of(st.none(), st.integers(0, 11))),
        "pnum": draw(st.one_of(st.none(), st.integers(1, 9999))),
        "pno": draw(st.one_of(st.none(), st.integers(1, 9999))),
        "cp": cp_pairs,
    }


@PROPERTY
@given(packets())
def test_encode_decode_round_trip(spec: dict[str, Any]) -> None:
    wire = encode_frame(build_segment(**spec))
    records = feed_all(wire)
    assert len(records) == 1
    frame = records[0]
    assert isinstance(frame, Frame)
    assert frame.quirks == ()
    packet = decode(frame)
    for name in ("qn", "st", "cn", "pw", "mn", "flag", "pnum", "pno"):
        assert getattr(packet, name) == spec[name], name
    expected_cp: dict[str, str] = {}
    expected_data: dict[str, dict[str, str]] = {}
    for key, value in spec["cp"]:
        text = value[2:-2] if value.startswith("//") and value.endswith("//") else value
        code, dash, field = key.partition("-")
        if dash:
            expected_data.setdefault(code, {})[field] = text
        else:
            expected_cp[key] = text
    assert packet.cp == expected_cp
    assert packet.data == expected_data
    assert packet.records[0].data_time == expected_cp["DataTime"]
    assert packet.records[0].data_time_us == parse_time_us(expected_cp["DataTime"])
    if spec["flag"] is not None:
        assert packet.version == ("2005", "2017", "2025")[spec["flag"] >> 2]
        assert packet.ack_requested == bool(spec["flag"] & 1)
    # A reply, when one is due, is itself a valid frame.
    reply = reply_for(packet)
    if reply is not None:
        reply_packet = decode(feed_all(reply)[0])
        assert reply_packet.qn == packet.qn
        assert reply_packet.cn in ("9013", "9014")


# Pieces of streams: every golden vector, every field-quirk input, and noise.
PIECES = [v["wire"].encode("utf-8") for v in VECTORS] + [case[0] for case in CASES.values()]
noise = st.binary(max_size=40) | st.sampled_from(
    [b"#", b"##", b"\r\n", b"\n", b"##9999", b"##0010\r\n", b"&&1C80\r\n", b"\xe5\xbc\x80"]
)
streams = st.lists(st.sampled_from(PIECES) | noise, min_size=1, max_size=8).map(b"".join)


def _chunked(data: bytes, cuts: list[int], **kwargs: Any) -> list[Frame | Rejected]:
    framer = FrameBuffer(**kwargs)
    out: list[Frame | Rejected] = []
    previous = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}):
        out += framer.feed(data[previous:cut])
        previous = cut
    out += framer.feed(data[previous:])
    out += framer.finish()
    return out


@PROPERTY
@given(streams, st.lists(st.integers(0, 20_000), max_size=12), st.booleans())
def test_chunking_does_not_change_the_records(data: bytes, cuts: list[int], lenient: bool) -> None:
    assert _chunked(data, cuts, lenient=lenient) == feed_all(data, lenient=lenient)


def _mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, where, byte in edits:
        if not buf:
            buf.append(byte)
            continue
        i = where % len(buf)
        if kind == 0:
            buf[i] = byte
        elif kind == 1:
            buf.insert(i, byte)
        else:
            del buf[i]
    return bytes(buf)


edits = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10_000), st.integers(0, 255)),
                 max_size=6)  # fmt: skip
fuzz_inputs = st.one_of(
    st.binary(max_size=600),
    st.tuples(streams, edits).map(lambda t: _mutate(*t)),
)
configs = st.fixed_dictionaries(
    {
        "lenient": st.booleans(),
        "max_frame_bytes": st.sampled_from([12, 64, 300, 2000, 10_012]),
        "tail_search_bytes": st.sampled_from([1, 16, 4096]),
        "max_tail_candidates": st.sampled_from([1, 4]),
        "garbage_report_bytes": st.sampled_from([1, 7, 4096]),
    }
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fuzz_inputs, configs, st.lists(st.integers(0, 20_000), max_size=8))
def test_fuzz_only_protocol_error_escapes(
    data: bytes, config: dict[str, Any], cuts: list[int]
) -> None:
    max_buffer = config["max_frame_bytes"] + 1 + (cuts[0] % 100 if cuts else 0)
    framer = FrameBuffer(max_buffer_bytes=max_buffer, **config)
    records: list[Frame | Rejected] = []
    previous = 0
    for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
        records += framer.feed(data[previous:cut])
        previous = cut
        assert framer.buffered <= config["max_frame_bytes"] <= max_buffer
    records += framer.finish()
    assert framer.buffered == 0
    position = 0
    for record in records:
        assert record.offset == position
        if isinstance(record, Frame):
            position += len(record.raw)
            try:
                packet = decode(record, lenient=config["lenient"])
            except ProtocolError:
                continue
            packet_kind(packet)
            reply_for(packet, reply_without_qn=True, reply_unknown_version=True)
            packet_to_json(packet, raw_values=True)
        else:
            assert len(record.raw) <= max(config["max_frame_bytes"], 64)
            position += record.consumed
            rejected_to_json(record)
    assert position == len(data)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 4_102_444_799_999), min_size=1, max_size=50))
def test_qn_generator_unique_and_increasing(clock: list[int]) -> None:
    generator = QnGenerator()
    qns = [generator.next(now) for now in clock]
    assert all(len(q) == 17 and q.isdigit() for q in qns)
    assert qns == sorted(qns)
    assert len(set(qns)) == len(qns)
