"""Protocol core speed: frame + CRC + decode per frame, against splitting the same bytes.

Run: ``.venv/bin/python benchmarks/protocol.py`` (``--quick`` for a short run).

For three frame sizes (a ~350-byte 2011 water upload, a ~700-byte 2051 flue-gas frame, a
~1.2 KB hourly frame) it prints, all measured in the same run:

- ``split``: ``bytes.split(b"\\r\\n")`` over the same stream (the floor: no framing at all);
- ``frame+crc+decode``: ``FrameBuffer.feed`` of the whole stream, then ``decode`` of every
  frame (bulk arrival), and the same with one ``feed`` per frame (one frame per wakeup,
  the usual HJ 212 pattern);
- the ratio of the two, and ``crc`` alone (the XOR-fold) next to the 256-entry table loop.

Then the record types: building and reading a slotted frozen dataclass (what
``protocol.records`` declares), the same built through ``protocol.records.new_packet``
(slot descriptors, what the decoder uses), a slotted mutable dataclass and a NamedTuple
with the same 18 fields.

Figures are CPU time of this process, medians of several repeats (min in brackets); this
machine's speed moves by up to 30 % between runs (performance.md), so only ratios within
one run mean much.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocol import CrcVariant, Frame, FrameBuffer, Packet, decode, encode_frame, hj212_crc
from protocol.crc import _T
from protocol.records import new_packet

WATER_2011 = (
    "QN=20240315103000123;ST=32;CN=2011;PW=123456;MN=88888880000000000000A001;Flag=5;"
    "CP=&&DataTime=20240315103000;w00000-Rtd=12.35,w00000-Flag=N;w01001-Rtd=7.21,"
    "w01001-Flag=N;w01018-SampleTime=20240315100000,w01018-Rtd=35.6,w01018-Flag=N,"
    "w01018-EFlag=A01;w21003-Rtd=1.204,w21003-Flag=N;w21011-Rtd=0.215,w21011-Flag=N;"
    "w21001-Rtd=8.63,w21001-Flag=N&&"
)
GAS_2051 = (
    "QN=20240315103000789;ST=31;CN=2051;PW=123456;MN=88888880000000000000A002;Flag=5;"
    "CP=&&DataTime=20240315102000;a00000-Cou=27162.0,a00000-Min=44.80,a00000-Avg=45.27,"
    "a00000-Max=45.90,a00000-Flag=N;a21026-Cou=0.334,a21026-Min=11.2,a21026-Avg=12.3,"
    "a21026-Max=13.9,a21026-ZsMin=14.4,a21026-ZsAvg=15.8,a21026-ZsMax=17.8,a21026-Flag=N;"
    "a21002-Cou=1.046,a21002-Min=36.1,a21002-Avg=38.5,a21002-Max=41.0,a21002-ZsMin=46.3,"
    "a21002-ZsAvg=49.4,a21002-ZsMax=52.6,a21002-Flag=N;a34013-Cou=0.057,a34013-Min=1.8,"
    "a34013-Avg=2.1,a34013-Max=2.6,a34013-ZsMin=2.3,a34013-ZsAvg=2.7,a34013-ZsMax=3.3,"
    "a34013-Flag=N;a19001-Min=9.9,a19001-Avg=10.2,a19001-Max=10.6,a19001-Flag=N;"
    "a01012-Avg=52.4,a01012-Flag=N;a01014-Avg=8.6,a01014-Flag=N&&"
)
_HOURLY_CODES = ("a00000", "a21026", "a21002", "a21005", "a34013", "a21024", "a24088",
                 "a19001", "a01012", "a01013", "a01014", "a01011", "a21001", "a05002")  # fmt: skip
HOURLY_2061 = (
    "QN=20240315110000001;ST=31;CN=2061;PW=123456;MN=88888880000000000000A002;Flag=5;"
    "CP=&&DataTime=20240315100000;"
    + ";".join(
        f"{c}-Cou=1.046,{c}-Min=36.1,{c}-Avg=38.5,{c}-Max=41.0,{c}-Flag=N" for c in _HOURLY_CODES
    )
    + "&&"
)


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median and minimum CPU seconds of ``fn`` over ``repeats`` runs.

    CPU time of this process (``time.process_time``), not wall time: other processes
    sharing the two cores then do not inflate the figures (steal time still does)."""
    fn()  # warm-up
    runs = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        runs.append(time.process_time() - start)
    return statistics.median(runs), min(runs)


def _table_crc(data: bytes) -> int:
    reg = 0xFFFF
    table = _T
    for b in data:
        reg = table[(reg >> 8) ^ b]
    return reg


def bench_frames(name: str, segment: str, count: int, repeats: int) -> dict[str, float]:
    frame = encode_frame(segment)
    stream = frame * count
    frames = [frame] * count
    seg = frame[6:-6]

    def split() -> None:
        stream.split(b"\r\n")

    def bulk() -> None:
        framer = FrameBuffer()
        for item in framer.feed(stream):
            decode(item)  # type: ignore[arg-type]

    def per_wakeup() -> None:
        framer = FrameBuffer()
        feed = framer.feed
        for data in frames:
            for item in feed(data):
                decode(item)  # type: ignore[arg-type]

    def frame_only() -> None:
        FrameBuffer().feed(stream)

    def crc() -> None:
        for _ in range(count):
            hj212_crc(seg)

    def crc_table() -> None:
        for _ in range(count):
            _table_crc(seg)

    check = FrameBuffer().feed(stream)
    assert len(check) == count
    assert all(isinstance(r, Frame) for r in check)
    results: dict[str, float] = {"bytes": len(frame), "segment": len(seg)}
    for label, fn in (
        ("split", split),
        ("frame", frame_only),
        ("bulk", bulk),
        ("wakeup", per_wakeup),
        ("crc", crc),
        ("crc_table", crc_table),
    ):
        med, low = _timed(fn, repeats)
        results[label] = med / count * 1e6
        results[label + "_min"] = low / count * 1e6
    print(
        f"{name:<22} {len(frame):>5} B | split {results['split']:6.2f} us | "
        f"frame {results['frame']:5.2f} us | "
        f"frame+crc+decode {results['bulk']:6.2f} us "
        f"[{results['bulk_min']:.2f}] = {1e6 / results['bulk']:8,.0f} frames/s "
        f"({results['bulk'] / results['split']:4.1f}x split) | "
        f"one feed per frame {results['wakeup']:6.2f} us | "
        f"crc {results['crc']:5.2f} us ({results['crc'] / results['bulk']:.0%} of total), "
        f"table loop {results['crc_table']:5.2f} us"
    )
    return results


# -- record types ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FrozenSlots:
    a: object
    b: object
    c: object
    d: object
    e: object
    f: object
    g: object
    h: object
    i: object
    j: object
    k: object
    l: object  # noqa: E741
    m: object
    n: object
    o: object
    p: object
    q: object
    r: object


@dataclass(slots=True)
class MutableSlots:
    a: object
    b: object
    c: object
    d: object
    e: object
    f: object
    g: object
    h: object
    i: object
    j: object
    k: object
    l: object  # noqa: E741
    m: object
    n: object
    o: object
    p: object
    q: object
    r: object


class Tuple18(NamedTuple):
    a: object
    b: object
    c: object
    d: object
    e: object
    f: object
    g: object
    h: object
    i: object
    j: object
    k: object
    l: object  # noqa: E741
    m: object
    n: object
    o: object
    p: object
    q: object
    r: object


def bench_records(count: int, repeats: int) -> None:
    args = tuple(range(18))
    print("\nrecord type (18 fields, like Packet)     build      read 3 attrs")
    packet_args: tuple[Any, ...] = (
        "q", "32", "2011", "p", "m", 5, "2017", True, False, None, None, {}, {}, {}, (), (),
        CrcVariant.HJ212, b"",
    )  # fmt: skip
    packets = [Packet(*packet_args) for _ in range(count)]

    def build_packet() -> None:
        for _ in range(count):
            new_packet(*packet_args)

    def read_packet() -> None:
        for obj in packets:
            obj.qn  # noqa: B018
            obj.data  # noqa: B018
            obj.raw  # noqa: B018

    build_med, _ = _timed(build_packet, repeats)
    read_med, _ = _timed(read_packet, repeats)
    print(
        f"{'Packet via new_packet() [hot path]':<40} {build_med / count * 1e6:6.3f} us  "
        f"{read_med / count * 1e6:6.3f} us"
    )
    for name, cls in (
        ("dataclass(frozen, slots) [records.py]", FrozenSlots),
        ("dataclass(slots)", MutableSlots),
        ("NamedTuple", Tuple18),
    ):
        made = [cls(*args) for _ in range(count)]

        def build(cls: Any = cls) -> None:
            for _ in range(count):
                cls(*args)

        def read(made: list[Any] = made) -> None:
            for obj in made:
                obj.a  # noqa: B018
                obj.j  # noqa: B018
                obj.r  # noqa: B018

        build_med, _ = _timed(build, repeats)
        read_med, _ = _timed(read, repeats)
        print(f"{name:<40} {build_med / count * 1e6:6.3f} us  {read_med / count * 1e6:6.3f} us")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="fewer frames and repeats")
    args = parser.parse_args(argv)
    count, repeats = (500, 3) if args.quick else (4000, 7)
    print(f"python {sys.version.split()[0]}, {count} frames per run, median of {repeats} runs\n")
    results = {
        "2011 water real-time": bench_frames("2011 water real-time", WATER_2011, count, repeats),
        "2051 gas minute": bench_frames("2051 gas minute", GAS_2051, count, repeats),
        "2061 hourly ~1.2 KB": bench_frames("2061 hourly ~1.2 KB", HOURLY_2061, count, repeats),
    }
    bench_records(count * 10, repeats)
    small = results["2011 water real-time"]
    print(
        f"\ntarget check (~350-byte frame): {small['bulk']:.1f} us per frame "
        f"(target <= 25), {small['bulk'] / small['split']:.1f}x the split (about 10x), "
        f"CRC {small['crc'] / small['bulk']:.0%} of it (at most a third)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
