"""FrameBuffer: bounds, resync, partial frames, tails, non-ASCII length/CRC variants."""

from __future__ import annotations

import pytest
from protokit import feed_all, feed_bytewise, good_frame, partial, sandwich, summary

from protocol import (
    CrcVariant,
    Frame,
    FrameBuffer,
    Quirk,
    Rejected,
    RejectReason,
    decode,
    encode_frame,
)
from protocol.crc import hj212_crc

LOG_SEGMENT = (
    "QN=20240315103500007;ST=32;CN=3020;PW=123456;MN=88888880000000000000A001;Flag=5;"
    "CP=&&DataTime=20240315103455;PolId=w01018;i11001-Info=//开始零点校准//&&"
)


def _reasons(records: list[Frame | Rejected]) -> list[str]:
    return ["frame" if isinstance(r, Frame) else r.reason.value for r in records]


def test_constructor_rejects_inconsistent_bounds() -> None:
    with pytest.raises(ValueError, match="max_frame_bytes"):
        FrameBuffer(max_frame_bytes=11)
    with pytest.raises(ValueError, match="max_buffer_bytes"):
        FrameBuffer(max_frame_bytes=100, max_buffer_bytes=100)
    with pytest.raises(ValueError, match="tail_search_bytes"):
        FrameBuffer(tail_search_bytes=0)


def test_stream_without_hashes_stays_bounded_and_is_reported() -> None:
    framer = FrameBuffer(garbage_report_bytes=1000)
    out: list[Frame | Rejected] = []
    for _ in range(100):
        out += framer.feed(b"x" * 999)
        assert framer.buffered == 0
    out += framer.close()
    assert all(r.reason is RejectReason.GARBAGE for r in out if isinstance(r, Rejected))
    assert sum(r.consumed for r in out if isinstance(r, Rejected)) == 99_900
    # Reported every 1,000 bytes, with a bounded excerpt.
    assert len(out) == 100
    assert all(len(r.raw) <= 64 for r in out if isinstance(r, Rejected))


def test_huge_declared_length_that_never_completes_is_bounded() -> None:
    framer = FrameBuffer(max_frame_bytes=2000, max_buffer_bytes=4096)
    out = framer.feed(b"##9999QN=")
    assert out == []
    assert partial(framer)
    for _ in range(50):
        out += framer.feed(b"a" * 1000)
        assert framer.buffered <= 2000
    assert _reasons(out)[0] == "too_long"
    assert all(reason in ("too_long", "garbage") for reason in _reasons(out))


def test_one_huge_feed_is_taken_in_bounded_slices() -> None:
    framer = FrameBuffer(max_frame_bytes=1000, max_buffer_bytes=1500)
    data = (good_frame() + b"noise" * 100) * 200
    out = framer.feed(data)
    out += framer.finish()
    frames = [r for r in out if isinstance(r, Frame)]
    assert len(frames) == 200
    assert framer.buffered == 0


def test_partial_frame_discard_and_close() -> None:
    framer = FrameBuffer()
    frame = good_frame()
    assert framer.feed(frame[:50]) == []
    assert partial(framer)
    assert framer.buffered == 50
    dropped = framer.discard_partial()
    assert dropped is not None
    assert dropped.reason is RejectReason.TRUNCATED
    assert dropped.raw == frame[:50]
    assert dropped.consumed == 50
    assert not partial(framer)
    assert framer.discard_partial() is None
    # The offsets continue after the dropped bytes.
    out = framer.feed(frame)
    assert isinstance(out[0], Frame)
    assert out[0].offset == 50
    assert framer.feed(frame[:10]) == []
    closed = framer.close()
    assert [r.reason for r in closed] == [RejectReason.TRUNCATED]
    assert closed[0].offset == 50 + len(frame)


def test_lone_trailing_hash_is_kept() -> None:
    framer = FrameBuffer()
    frame = good_frame()
    out = framer.feed(b"junk#")
    assert out == []
    assert framer.buffered == 1
    assert not partial(framer)
    assert framer.pending_garbage == 4
    out = framer.feed(frame[1:])
    assert _reasons(out) == ["garbage", "frame"]
    assert out[0].raw == b"junk"
    assert out[1].raw == frame


def test_close_reports_lone_hash_as_garbage() -> None:
    framer = FrameBuffer()
    framer.feed(b"#")
    closed = framer.close()
    assert [(r.reason, r.consumed) for r in closed] == [(RejectReason.GARBAGE, 1)]


def test_bad_length_field_run_ends_at_next_frame() -> None:
    records = feed_all(sandwich(b"##12ab and more"))
    assert _reasons(records) == ["frame", "bad_length_field", "frame"]
    assert records[1].consumed == len(b"##12ab and more")
    assert feed_bytewise(sandwich(b"##12ab and more")) == records


def test_triple_hash_resyncs_on_the_second() -> None:
    frame = good_frame()
    records = feed_all(b"#" + frame)
    assert _reasons(records) == ["bad_length_field", "frame"]
    assert records[0].consumed == 1


@pytest.mark.parametrize(
    ("tail", "quirks"),
    [
        (b"\r\n", ()),
        (b"\n", (Quirk.TAIL_LF,)),
        (b"\r", (Quirk.TAIL_LF,)),
        (b"", (Quirk.TAIL_MISSING,)),
    ],
)
def test_tails(tail: bytes, quirks: tuple[Quirk, ...]) -> None:
    frame = good_frame()[:-2] + tail
    stream = frame + good_frame(5)
    records = feed_all(stream)
    assert _reasons(records) == ["frame", "frame"]
    assert records[0].quirks == quirks
    assert records[0].raw == frame
    strict = feed_all(stream, lenient=False)
    if quirks:
        assert _reasons(strict) == ["length_mismatch", "frame"]
    else:
        assert _reasons(strict) == ["frame", "frame"]
    assert feed_bytewise(stream) == records


def test_missing_tail_at_end_of_input_only_on_finish() -> None:
    frame = good_frame()[:-2]
    framer = FrameBuffer()
    assert framer.feed(frame) == []
    assert partial(framer)
    out = framer.finish()
    assert len(out) == 1
    assert isinstance(out[0], Frame)
    assert out[0].quirks == (Quirk.TAIL_MISSING,)
    framer = FrameBuffer()
    framer.feed(frame)
    assert [r.reason for r in framer.close()] == [RejectReason.TRUNCATED]


def test_truncated_frame_before_a_good_one() -> None:
    frame = good_frame()
    stream = frame[:40] + frame
    records = feed_all(stream)
    assert _reasons(records) == ["length_mismatch", "frame"]
    assert records[0].consumed == 40
    assert feed_bytewise(stream) == records


def test_declared_length_too_long_accepted_once_tail_arrives() -> None:
    """A device that waits for its reply must not wait for bytes that never come."""
    segment = good_frame()[6:-6]
    frame = b"##%04d" % (len(segment) + 5) + segment + b"%04X\r\n" % hj212_crc(segment)
    framer = FrameBuffer()
    out = framer.feed(frame)
    assert len(out) == 1
    assert isinstance(out[0], Frame)
    assert out[0].quirks == (Quirk.LENGTH_REPAIRED,)


def test_length_in_characters_utf8() -> None:
    """protocol.md 1.3: example 12 with length 0146 (characters), CRC over UTF-8 bytes."""
    data = LOG_SEGMENT.encode("utf-8")
    frame = b"##0146" + data + b"7F80\r\n"
    records = feed_all(sandwich(frame))
    assert _reasons(records) == ["frame", "frame", "frame"]
    assert records[1].quirks == (Quirk.LENGTH_CHARS,)
    assert decode(records[1]).data["i11001"]["Info"] == "开始零点校准"
    assert _reasons(feed_all(sandwich(frame), lenient=False)) == [
        "frame", "length_mismatch", "frame",
    ]  # fmt: skip


def test_gbk_bytes_length_in_bytes() -> None:
    data = LOG_SEGMENT.encode("gb18030")
    frame = b"##%04d" % len(data) + data + b"5D80\r\n"
    records = feed_all(sandwich(frame))
    assert isinstance(records[1], Frame)
    packet = decode(records[1])
    assert Quirk.GBK_TEXT in packet.quirks
    assert packet.data["i11001"]["Info"] == "开始零点校准"
    strict = feed_all(sandwich(frame), lenient=False)
    assert isinstance(strict[1], Frame)
    with pytest.raises(Exception, match="bad_encoding"):
        decode(strict[1], lenient=False)


def test_gbk_bytes_length_in_characters() -> None:
    data = LOG_SEGMENT.encode("gb18030")
    frame = b"##0146" + data + b"5D80\r\n"
    records = feed_all(sandwich(frame))
    assert isinstance(records[1], Frame)
    assert records[1].quirks == (Quirk.LENGTH_CHARS, Quirk.GBK_TEXT)


def test_crc_over_utf16_units() -> None:
    data = LOG_SEGMENT.encode("utf-8")
    frame = b"##0146" + data + b"E981\r\n"
    records = feed_all(sandwich(frame))
    assert isinstance(records[1], Frame)
    assert records[1].quirks == (Quirk.CRC_UTF16, Quirk.LENGTH_CHARS)
    assert records[1].crc_variant is CrcVariant.HJ212


def test_crc_mismatch_with_right_length_is_decided_at_once() -> None:
    frame = bytearray(good_frame())
    frame[-3] = ord("0") if frame[-3] != ord("0") else ord("1")
    framer = FrameBuffer()
    out = framer.feed(bytes(frame))
    assert [r.reason for r in out] == [RejectReason.CRC_MISMATCH]  # type: ignore[union-attr]
    assert framer.buffered == 0


def test_corrupted_segment_keeps_neighbours() -> None:
    frame = bytearray(good_frame())
    frame[30] ^= 0x01
    records = feed_all(sandwich(bytes(frame)))
    assert summary(records)[1][:2] == ("R", "crc_mismatch")
    assert isinstance(records[0], Frame)
    assert isinstance(records[2], Frame)


def test_empty_segment_frame() -> None:
    records = feed_all(encode_frame(b""))
    assert isinstance(records[0], Frame)
    assert records[0].segment == b""


def test_garbage_split_at_report_size_independent_of_chunks() -> None:
    data = b"z" * 25 + good_frame()
    whole = feed_all(data, garbage_report_bytes=10)
    assert [(r.reason.value, r.consumed) for r in whole[:-1]] == [
        ("garbage", 10), ("garbage", 10), ("garbage", 5),
    ]  # fmt: skip
    assert feed_bytewise(data, garbage_report_bytes=10) == whole
