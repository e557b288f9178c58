"""Shared helpers of the protocol tests: the golden vectors, feeding helpers, sample frames."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from protocol import Frame, FrameBuffer, Rejected, decode, encode_frame

ROOT = Path(__file__).resolve().parents[2]
VECTORS_PATH = ROOT / "tests" / "data" / "vectors" / "protocol-examples.jsonl"

MN = "88888880000001"


def load_vectors() -> list[dict[str, Any]]:
    with VECTORS_PATH.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


VECTORS = load_vectors()


def good_frame(second: int = 0, value: str = "1.0") -> bytes:
    """A plain valid 2017 real-time frame (A=0) used as a neighbour of faulty input."""
    t = f"2024010111{second // 60:02d}{second % 60:02d}"
    return encode_frame(
        f"QN={t}000;ST=32;CN=2011;PW=123456;MN={MN};Flag=4;"
        f"CP=&&DataTime={t};w01018-Rtd={value},w01018-Flag=N&&"
    )


def feed_all(data: bytes, chunks: Iterable[int] | None = None, **kwargs: Any) -> list[Any]:
    """Feed ``data`` (whole, or split at the given chunk sizes), then finish()."""
    framer = FrameBuffer(**kwargs)
    out: list[Frame | Rejected] = []
    if chunks is None:
        out += framer.feed(data)
    else:
        i = 0
        for size in chunks:
            out += framer.feed(data[i : i + size])
            i += size
        out += framer.feed(data[i:])
    out += framer.finish()
    return out


def feed_bytewise(data: bytes, **kwargs: Any) -> list[Any]:
    framer = FrameBuffer(**kwargs)
    out: list[Frame | Rejected] = []
    for i in range(len(data)):
        out += framer.feed(data[i : i + 1])
    out += framer.finish()
    return out


def summary(records: Sequence[Frame | Rejected], *, lenient: bool = True) -> list[tuple[Any, ...]]:
    """A comparable digest of records.

    ("F", cn, quirks, offset) per frame, ("R", reason, variant, offset, consumed) per reject.
    """
    result: list[tuple[Any, ...]] = []
    for r in records:
        if isinstance(r, Frame):
            packet = decode(r, lenient=lenient)
            result.append(("F", packet.cn, tuple(q.value for q in packet.quirks), r.offset))
        else:
            result.append(("R", r.reason.value, r.crc_variant.value, r.offset, r.consumed))
    return result


def sandwich(middle: bytes) -> bytes:
    """``middle`` between two good frames in one stream."""
    return good_frame(1, "11.0") + middle + good_frame(2, "22.0")


def partial(framer: FrameBuffer) -> bool:
    """``framer.has_partial`` read through a call, so type checkers do not carry a value
    narrowed by an earlier assert over the feed that changes it."""
    return framer.has_partial
