"""``hj212-gateway replay``: send captured frames byte for byte to a gateway.

The input is cut at every ``##`` and each piece is sent exactly as captured (never
re-encoded, field-quirks Q24), so bad frames are replayed as faithfully as good ones.
Frames of one MN always travel on the same connection, in capture order. For every frame
that asks for a reply (Flag A=1 with a QN) the matching 9014/9013 (same QN) is awaited.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from gateway.settings_cli import add_config_flag, add_storage_flags, settings_from
from protocol import FrameBuffer, Packet, ProtocolError, decode_segment, reply_for
from storage import open_store

EPILOG = """\
examples:
  hj212-gateway replay capture.bin --to 127.0.0.1:2121
  hj212-gateway replay frames.txt --to gw:2121 --rate 200 --connections 50 --json
  hj212-gateway replay --from-db --mn 88888880000000000000A001 --since 2024-03-15T00:00 \\
      --dsn postgresql://postgres@127.0.0.1/hj212 --to 127.0.0.1:2121

Exit 0 when every expected reply arrived, 1 when some did not, 2 on usage errors.
"""

# Replies are awaited this long after the last frame was sent (DAUs wait 5-10 s).
DEFAULT_REPLY_TIMEOUT_S = 10.0
# Frames fetched from the archive at most (--from-db); a bound on memory.
MAX_DB_FRAMES = 1_000_000


@dataclass(slots=True)
class _Item:
    data: bytes
    mn: str
    expect_qn: str | None
    sent_at: float = 0.0


@dataclass(slots=True)
class _Summary:
    frames: int = 0
    sent: int = 0
    bytes_sent: int = 0
    expected_replies: int = 0
    replied: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "replay",
        help="send captured frames byte for byte to a gateway",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", nargs="?", help="captured bytes or one frame per line ('-' = stdin)")
    p.add_argument("--to", required=True, metavar="HOST:PORT", help="gateway address")
    p.add_argument("--rate", type=float, default=0.0, help="frames per second (0 = no limit)")
    p.add_argument("--connections", type=int, default=1, help="connections to spread MNs over")
    p.add_argument(
        "--reply-timeout", type=float, default=DEFAULT_REPLY_TIMEOUT_S, help="seconds to wait"
    )
    p.add_argument("--from-db", action="store_true", help="read frames from hj212.frame")
    p.add_argument("--mn", help="with --from-db: only this MN")
    p.add_argument("--since", help="with --from-db: ISO time (UTC unless an offset is given)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_config_flag(p)
    add_storage_flags(p)
    p.set_defaults(func=_run)


def split_frames(data: bytes) -> list[bytes]:
    """Cut a capture at every ``##``; leading bytes before the first one are kept too."""
    pieces: list[bytes] = []
    start = 0
    while True:
        nxt = data.find(b"##", start + 2)
        # A frame's body never contains "##" (its length field follows right after), but
        # "###" (a stray '#') should stay with the frame it precedes.
        while nxt != -1 and data[nxt + 2 : nxt + 3] == b"#":
            nxt = data.find(b"##", nxt + 1)
        if nxt == -1:
            pieces.append(data[start:])
            break
        pieces.append(data[start:nxt])
        start = nxt
    return [p for p in pieces if p.strip()]


def _describe(piece: bytes) -> tuple[str, str | None]:
    """(MN, QN of an expected reply or None) for one captured piece."""
    framer = FrameBuffer(lenient=True)
    for item in [*framer.feed(piece.strip() + b"\r\n"), *framer.close()]:
        segment = getattr(item, "segment", None)
        if segment is None:
            continue
        try:
            packet: Packet = decode_segment(segment)
        except ProtocolError:
            return "", None
        expect = packet.qn if reply_for(packet) is not None else None
        return packet.mn, expect
    return "", None


def _parse_target(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--to wants HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


async def _load_from_db(args: argparse.Namespace) -> list[bytes]:
    settings = settings_from(args)
    if settings is None:
        raise ValueError("invalid configuration")
    since_us = None
    if args.since:
        since = dt.datetime.fromisoformat(args.since)
        if since.tzinfo is None:
            since = since.replace(tzinfo=dt.UTC)
        since_us = int(since.timestamp() * 1_000_000)
    store = open_store(settings.storage)
    await store.open()
    try:
        rows = await store.fetch_frames(mn=args.mn, since_us=since_us, limit=MAX_DB_FRAMES)
    finally:
        await store.close()
    return [raw for _, raw in rows]


async def _connection(
    host: str,
    port: int,
    items: list[_Item],
    *,
    pacer: _Pacer,
    summary: _Summary,
    reply_timeout_s: float,
) -> None:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        summary.errors.append(f"connect: {exc}")
        return
    waiting: dict[str, _Item] = {}
    done = asyncio.Event()
    sending_finished = False

    async def read_replies() -> None:
        framer = FrameBuffer(lenient=True)
        while True:
            chunk = await reader.read(65_536)
            if not chunk:
                break
            for item in framer.feed(chunk):
                segment = getattr(item, "segment", None)
                if segment is None:
                    continue
                try:
                    reply = decode_segment(segment)
                except ProtocolError:
                    continue
                pending = waiting.pop(reply.qn or "", None)
                if pending is not None and reply.cn in ("9013", "9014"):
                    summary.replied += 1
                    summary.latencies.append(time.monotonic() - pending.sent_at)
            if sending_finished and not waiting:
                done.set()
                break

    reader_task = asyncio.create_task(read_replies())
    try:
        for item in items:
            await pacer.wait()
            item.sent_at = time.monotonic()
            if item.expect_qn is not None:
                waiting[item.expect_qn] = item
            writer.write(item.data)
            await writer.drain()
            summary.sent += 1
            summary.bytes_sent += len(item.data)
        sending_finished = True
        if waiting:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(reply_timeout_s):
                    await done.wait()
    except OSError as exc:
        summary.errors.append(f"send: {exc}")
    finally:
        reader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await reader_task
        writer.close()


class _Pacer:
    """Spaces sends to an overall rate (frames per second) across all connections."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._next = time.monotonic()

    async def wait(self) -> None:
        if not self._interval:
            return
        now = time.monotonic()
        slot = max(self._next, now)
        self._next = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)


async def replay(
    frames: list[bytes],
    host: str,
    port: int,
    *,
    rate: float = 0.0,
    connections: int = 1,
    reply_timeout: float = DEFAULT_REPLY_TIMEOUT_S,
) -> _Summary:
    """Send ``frames`` to host:port and collect the replies (the library form of the CLI)."""
    summary = _Summary(frames=len(frames))
    lanes: list[list[_Item]] = [[] for _ in range(max(1, connections))]
    for data in frames:
        mn, expect = _describe(data)
        if expect is not None:
            summary.expected_replies += 1
        lanes[zlib.crc32(mn.encode()) % len(lanes)].append(_Item(data, mn, expect))
    pacer = _Pacer(rate)
    await asyncio.gather(
        *(
            _connection(
                host, port, lane, pacer=pacer, summary=summary, reply_timeout_s=reply_timeout
            )
            for lane in lanes
            if lane
        )
    )
    return summary


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary_dict(s: _Summary) -> dict[str, object]:
    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 2)

    return {
        "frames": s.frames,
        "sent": s.sent,
        "bytes_sent": s.bytes_sent,
        "expected_replies": s.expected_replies,
        "replied": s.replied,
        "missing_replies": s.expected_replies - s.replied,
        "reply_latency_ms": {
            "p50": ms(_percentile(s.latencies, 0.50)),
            "p95": ms(_percentile(s.latencies, 0.95)),
            "p99": ms(_percentile(s.latencies, 0.99)),
            "max": ms(max(s.latencies) if s.latencies else None),
        },
        "errors": s.errors[:20],
    }


def _run(args: argparse.Namespace) -> int:
    try:
        host, port = _parse_target(args.to)
    except ValueError as exc:
        print(f"hj212-gateway replay: {exc}", file=sys.stderr)
        return 2
    if args.from_db == bool(args.file):
        print("hj212-gateway replay: give FILE or --from-db (one of them)", file=sys.stderr)
        return 2
    if args.connections < 1:
        print("hj212-gateway replay: --connections must be >= 1", file=sys.stderr)
        return 2
    try:
        if args.from_db:
            frames = asyncio.run(_load_from_db(args))
        else:
            data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
            frames = split_frames(data)
    except (OSError, ValueError) as exc:
        print(f"hj212-gateway replay: {exc}", file=sys.stderr)
        return 2
    summary = asyncio.run(
        replay(
            frames,
            host,
            port,
            rate=args.rate,
            connections=args.connections,
            reply_timeout=args.reply_timeout,
        )
    )
    result = summary_dict(summary)
    if args.json:
        print(json.dumps(result))
    else:
        lat = result["reply_latency_ms"]
        print(
            f"sent {summary.sent}/{summary.frames} frames ({summary.bytes_sent} bytes); "
            f"replies {summary.replied}/{summary.expected_replies}; latency ms {lat}"
        )
        for err in summary.errors[:5]:
            print(f"error: {err}", file=sys.stderr)
    ok = summary.replied == summary.expected_replies and summary.sent == summary.frames
    return 0 if ok else 1
