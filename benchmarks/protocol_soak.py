"""Soak test of the protocol core: many random and mutated frames through FrameBuffer+decode.

Run: ``.venv/bin/python benchmarks/protocol_soak.py [--count 1000000] [--seed 1]``
(not part of CI: a million frames take several minutes).

Streams are built from valid frames (random packets through the encoder, the golden
vectors), then mutated (bytes flipped, inserted, deleted, frames cut, garbage and stray
``#``/CR/LF spliced in) and fed in random chunk sizes to framers with different settings.
It asserts, for every frame:

- nothing but ``ProtocolError`` escapes ``decode``, ``reply_for``, ``packet_kind`` or
  ``packet_to_json``, and nothing at all escapes ``FrameBuffer``;
- ``buffered`` never exceeds ``max_frame_bytes`` (so never ``max_buffer_bytes``);
- every input byte is accounted for exactly once (record offsets are contiguous).

It prints progress every 5 % and a summary (records by outcome, reasons and quirks).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocol import (
    Frame,
    FrameBuffer,
    ProtocolError,
    Rejected,
    build_segment,
    decode,
    encode_frame,
    packet_kind,
    packet_to_json,
    reply_for,
)
from protocol.values import format_time_ms

VECTORS = Path(__file__).resolve().parents[1] / "tests" / "data" / "vectors"
CODES = ("w01018", "w21003", "a21026", "a34013", "a00000", "011", "B01", "02", "SB1", "i12001")
FIELDS = ("Rtd", "Avg", "Min", "Max", "Cou", "Flag", "ZsRtd", "SampleTime", "Info", "RS")
CONFIGS = (
    {"lenient": True},
    {"lenient": False},
    {"lenient": True, "max_frame_bytes": 600, "max_buffer_bytes": 1200, "tail_search_bytes": 64},
    {"lenient": True, "garbage_report_bytes": 16, "max_tail_candidates": 1},
)


def random_frame(rng: random.Random) -> bytes:
    now = rng.randrange(946_684_800_000, 4_102_444_799_999)
    data_time = format_time_ms(now)[:14]
    cp: list[tuple[str, str]] = [("DataTime", data_time)]
    for _ in range(rng.randrange(0, 12)):
        code, field = rng.choice(CODES), rng.choice(FIELDS)
        if field == "SampleTime":
            value = format_time_ms(now - rng.randrange(0, 10**7))[: rng.choice((14, 17))]
        elif field == "Flag":
            value = rng.choice("NFMSDCTB")
        else:
            value = f"{rng.uniform(-100, 10_000):.{rng.randrange(0, 4)}f}"
        cp.append((f"{code}-{field}", value))
    if rng.random() < 0.1:
        cp.append(("i11001-Info", "//开始零点校准; a=b, c//"))
    segment = build_segment(
        qn=format_time_ms(now) if rng.random() < 0.9 else None,
        st=rng.choice(("31", "32", "22", "91")),
        cn=rng.choice(("2011", "2051", "2061", "2031", "3020", "1013", "9015", "9014", "1234")),
        pw="123456",
        mn=rng.choice(("88888880000001", "88888880000000000000A001")),
        flag=rng.choice((None, 0, 1, 4, 5, 6, 7, 8, 9, 13)),
        cp=cp,
    )
    return encode_frame(segment)


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice((0, 0, 1, 1, 2, 5))):
        kind = rng.randrange(7)
        i = rng.randrange(len(buf) + 1)
        if kind == 0 and buf:
            buf[min(i, len(buf) - 1)] = rng.randrange(256)
        elif kind == 1:
            buf.insert(i, rng.randrange(256))
        elif kind == 2 and buf:
            del buf[min(i, len(buf) - 1)]
        elif kind == 3:
            del buf[i:]  # cut the frame
        elif kind == 4:
            buf[i:i] = rng.choice((b"#", b"##", b"\r\n", b"\n", b"\r", b"&&", b"##0099"))
        elif kind == 5:
            buf[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        else:
            buf[i:i] = rng.choice((b"cfc1", b"CC0", b"E7BE")) + b"\r\n"
    return bytes(buf)


def soak(count: int, seed: int) -> int:
    rng = random.Random(seed)
    vectors = [
        json.loads(line)["wire"].encode()
        for line in (VECTORS / "protocol-examples.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    outcomes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    quirks: Counter[str] = Counter()
    fed = 0
    framers_used = 0
    start = time.perf_counter()
    step = max(1, count // 20)
    next_report = step
    while fed < count:
        config = rng.choice(CONFIGS)
        framer = FrameBuffer(**config)
        framers_used += 1
        max_frame = int(config.get("max_frame_bytes", 10_012))
        pieces = []
        for _ in range(rng.randrange(1, 50)):
            base = rng.choice(vectors) if rng.random() < 0.2 else random_frame(rng)
            pieces.append(mutate(rng, base) if rng.random() < 0.5 else base)
        fed += len(pieces)
        stream = b"".join(pieces)
        records: list[Frame | Rejected] = []
        i = 0
        while i < len(stream):
            size = rng.choice((1, 7, 64, 500, 4096, 70_000))
            records += framer.feed(stream[i : i + size])
            i += size
            if framer.buffered > max_frame:
                raise AssertionError(f"buffered {framer.buffered} > {max_frame}")
        records += framer.finish()
        position = 0
        for record in records:
            if record.offset != position:
                raise AssertionError(f"offset {record.offset} != {position}")
            if isinstance(record, Frame):
                position += len(record.raw)
                try:
                    packet = decode(record, lenient=bool(config["lenient"]))
                    packet_kind(packet)
                    reply_for(packet, reply_without_qn=True)
                    packet_to_json(packet, raw_values=True)
                except ProtocolError as exc:
                    outcomes["decode_error"] += 1
                    reasons[exc.reason.value] += 1
                    continue
                outcomes["packet"] += 1
                quirks.update(q.value for q in packet.quirks)
            else:
                position += record.consumed
                outcomes["rejected"] += 1
                reasons[record.reason.value] += 1
        if position != len(stream):
            raise AssertionError(f"accounted {position} of {len(stream)} bytes")
        if fed >= next_report:
            elapsed = time.perf_counter() - start
            print(f"{fed:>10,} frames fed, {elapsed:6.1f} s, {fed / elapsed:8,.0f} frames/s")
            next_report += step
    elapsed = time.perf_counter() - start
    print(f"\n{fed:,} frames fed through {framers_used:,} framers in {elapsed:.1f} s")
    print("outcomes:", dict(outcomes.most_common()))
    print("reasons: ", dict(reasons.most_common()))
    print("quirks:  ", dict(quirks.most_common()))
    print("invariants held: only ProtocolError escaped, buffers bounded, every byte accounted")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Soak the protocol core with mutated frames.")
    parser.add_argument("--count", type=int, default=1_000_000, help="frames to feed")
    parser.add_argument("--seed", type=int, default=1, help="random seed (reproducible runs)")
    args = parser.parse_args(argv)
    return soak(args.count, args.seed)


if __name__ == "__main__":
    sys.exit(main())
