"""The golden vectors (tests/data/vectors): every frame decodes to exactly its header, cp
and data, fed whole and one byte at a time, and the replies are the vector file's lines."""

from __future__ import annotations

from typing import Any

import pytest
from protokit import VECTORS, VECTORS_PATH, feed_all, feed_bytewise

from protocol import (
    CrcVariant,
    Frame,
    Packet,
    Quirk,
    decode,
    packet_kind,
    reply_for,
)
from protocol.values import unwrap_text

NAMES = [v["name"] for v in VECTORS]


def _expected_data(vector: dict[str, Any]) -> dict[str, dict[str, str]]:
    # The vectors keep log text raw (``//text//``); the Packet contract (records.py) gives
    # such values without their slashes. That is the only transformation applied.
    return {
        code: {field: unwrap_text(text) for field, text in fields.items()}
        for code, fields in vector["data"].items()
    }


def _only_frame(records: list[Any]) -> Frame:
    assert len(records) == 1, records
    assert isinstance(records[0], Frame), records
    return records[0]


def test_vector_file_is_the_shared_one() -> None:
    """The repository keeps a copy; when the shared directory is there, they agree."""
    shared = VECTORS_PATH.parents[4] / "shared" / "vectors" / "protocol-examples.jsonl"
    if shared.exists():
        assert shared.read_bytes() == VECTORS_PATH.read_bytes()
    assert len(VECTORS) == 30


def test_only_the_log_vector_needs_unwrapping() -> None:
    changed = [v["name"] for v in VECTORS if _expected_data(v) != v["data"]]
    assert changed == ["3020 log with UTF-8 Chinese text"]


@pytest.mark.parametrize("vector", VECTORS, ids=NAMES)
def test_vector_decodes_exactly(vector: dict[str, Any]) -> None:
    wire = vector["wire"].encode("utf-8")
    frame = _only_frame(feed_all(wire))
    assert frame.raw == wire
    assert frame.offset == 0
    assert frame.crc_variant is CrcVariant.HJ212
    assert frame.quirks == ()
    packet = decode(frame)
    assert packet.header == vector["header"]
    assert packet.cp == vector["cp"]
    assert packet.data == _expected_data(vector)
    assert packet.raw == wire
    assert packet.cn == vector["header"]["CN"]
    assert packet.mn == vector["header"]["MN"]
    assert packet.qn == vector["header"].get("QN")


@pytest.mark.parametrize("vector", VECTORS, ids=NAMES)
def test_vector_fed_one_byte_at_a_time(vector: dict[str, Any]) -> None:
    wire = vector["wire"].encode("utf-8")
    whole = feed_all(wire)
    assert feed_bytewise(wire) == whole


def test_all_vectors_in_one_stream_keep_their_offsets() -> None:
    wires = [v["wire"].encode("utf-8") for v in VECTORS]
    stream = b"".join(wires)
    records = feed_all(stream)
    assert all(isinstance(r, Frame) for r in records)
    offsets = [sum(len(w) for w in wires[:i]) for i in range(len(wires))]
    assert [r.offset for r in records] == offsets
    assert feed_bytewise(stream) == records


def test_version_and_flag_bits() -> None:
    by_name = {v["name"]: decode(_only_frame(feed_all(v["wire"].encode()))) for v in VECTORS}
    p = by_name["2011 water real-time upload, ack wanted"]
    assert (p.version, p.flag, p.ack_requested, p.split) == ("2017", 5, True, False)
    p = by_name["2061 split upload part 1 of 2"]
    assert (p.flag, p.ack_requested, p.split, p.pnum, p.pno) == (7, True, True, 2, 1)
    p = by_name["2005-style real-time upload, no QN/Flag, old codes"]
    assert (p.version, p.flag, p.ack_requested, p.qn) == ("2005", None, False, None)
    assert p.quirks == (Quirk.MISSING_QN, Quirk.MISSING_FLAG)
    p = by_name["2005-style hourly flue-gas data, Flag=1"]
    assert (p.version, p.ack_requested) == ("2005", True)
    p = by_name["2025-style heartbeat 9015, Flag=9"]
    assert (p.version, p.ack_requested) == ("2025", True)
    p = by_name["3020 log with UTF-8 Chinese text"]
    assert p.data["i11001"]["Info"] == "开始零点校准"
    assert p.records[0].data_time == "20240315103455"


def _packets() -> list[tuple[dict[str, Any], Packet]]:
    return [(v, decode(_only_frame(feed_all(v["wire"].encode())))) for v in VECTORS]


# (request vector, reply vector) pairs of the file: upload -> 9014, notification -> 9013.
REPLY_PAIRS = [
    ("2011 water real-time upload, ack wanted", "9014 data reply to line 1"),
    ("1013 time calibration request", "9013 notification reply"),
    ("2061 split upload part 1 of 2", "9014 reply to part 1"),
    ("2005-style hourly flue-gas data, Flag=1", "2005-style data reply, Flag=0"),
    ("2025-style heartbeat 9015, Flag=9", "9013 reply to the heartbeat, Flag=8"),
]


@pytest.mark.parametrize(("request_name", "reply_name"), REPLY_PAIRS)
def test_reply_is_the_vector_files_reply_line(request_name: str, reply_name: str) -> None:
    packets = {v["name"]: p for v, p in _packets()}
    wires = {v["name"]: v["wire"].encode() for v in VECTORS}
    assert reply_for(packets[request_name]) == wires[reply_name]


def test_reply_echoes_part_two_qn() -> None:
    packets = {v["name"]: p for v, p in _packets()}
    reply = reply_for(packets["2061 split upload part 2 of 2"])
    assert reply is not None
    assert b"QN=20240315120001502;ST=91;CN=9014;" in reply
    assert b";Flag=4;CP=&&&&" in reply


def test_every_a1_upload_gets_9014_with_its_qn() -> None:
    for vector, packet in _packets():
        reply = reply_for(packet)
        kind = packet_kind(packet)
        if not packet.ack_requested or kind in ("answer", "platform_only"):
            assert reply is None, vector["name"]
            continue
        assert reply is not None, vector["name"]
        reply_packet = decode(_only_frame(feed_all(reply)))
        assert reply_packet.qn == packet.qn
        assert reply_packet.st == "91"
        assert reply_packet.cn == ("9014" if kind == "upload" else "9013")
        assert reply_packet.pw == packet.pw
        assert reply_packet.mn == packet.mn
        assert packet.flag is not None
        assert reply_packet.flag == packet.flag & ~3
        assert reply_packet.cp == {}
        assert reply_packet.data == {}


def test_no_reply_without_ack_bit() -> None:
    for vector, packet in _packets():
        if not packet.ack_requested:
            assert reply_for(packet) is None, vector["name"]


def test_platform_commands_from_a_device_get_no_reply() -> None:
    packets = {v["name"]: p for v, p in _packets()}
    packet = packets["1012 set time (platform to device)"]
    assert packet.ack_requested
    assert packet_kind(packet) == "platform_only"
    assert reply_for(packet) is None
    # 2061 is also a device upload CN: a known upload CN counts as upload.
    assert packet_kind(packets["2061 history request (platform to device)"]) == "upload"


def test_kinds_of_the_vectors() -> None:
    kinds = {v["name"]: packet_kind(p) for v, p in _packets()}
    assert kinds["2011 water real-time upload, ack wanted"] == "upload"
    assert kinds["9014 data reply to line 1"] == "platform_only"
    assert kinds["9011 QnRtn=1"] == "answer"
    assert kinds["9012 ExeRtn=1"] == "answer"
    assert kinds["1013 time calibration request"] == "notify"
    assert kinds["9013 notification reply"] == "answer"
    assert kinds["2025-style heartbeat 9015, Flag=9"] == "notify"
    assert kinds["2081 DAU restart time"] == "upload"
    assert kinds["3020 analyser status info"] == "upload"
