"""Helpers for end-to-end tests: a device-side TCP client and independent HJ 212 checks.

The CRC here is the standard's bitwise routine (protocol.md section 2.1), written
independently of protocol/crc.py so replies are checked by a second implementation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).resolve().parent.parent / "data" / "vectors" / "protocol-examples.jsonl"


def load_vectors() -> list[dict[str, Any]]:
    return [json.loads(line) for line in VECTORS.read_text(encoding="utf-8").splitlines()]


def naive_crc(data: bytes) -> int:
    reg = 0xFFFF
    for byte in data:
        reg = (reg >> 8) ^ byte
        for _ in range(8):
            lsb = reg & 1
            reg >>= 1
            if lsb:
                reg ^= 0xA001
    return reg


def frame(segment: str) -> bytes:
    seg = segment.encode("utf-8")
    return b"##%04d" % len(seg) + seg + b"%04X\r\n" % naive_crc(seg)


def expected_reply(header: dict[str, str], cn: str) -> bytes:
    """The reply the standard prescribes: QN echoed, ST=91, version bits kept, A/D cleared."""
    flag = int(header.get("Flag", "0"))
    segment = (
        f"QN={header['QN']};ST=91;CN={cn};PW={header['PW']};MN={header['MN']};"
        f"Flag={flag & ~0b11};CP=&&&&"
    )
    return frame(segment)


@dataclass
class Device:
    """One TCP connection acting as a DAU; collects every reply frame it receives."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    replies: list[bytes]
    _task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> Device:
        reader, writer = await asyncio.open_connection(host, port)
        dev = cls(reader, writer, [])
        dev._task = asyncio.get_running_loop().create_task(dev._read())
        return dev

    async def _read(self) -> None:
        buf = b""
        while True:
            chunk = await self.reader.read(65536)
            if not chunk:
                return
            buf += chunk
            while b"\r\n" in buf:
                line, buf = buf.split(b"\r\n", 1)
                self.replies.append(line + b"\r\n")

    def stop_reader(self) -> None:
        """Stop collecting replies, so a test can read the raw stream (e.g. wait for EOF)."""
        if self._task is not None:
            self._task.cancel()

    async def send(self, data: bytes, *, dribble: bool = False) -> None:
        if dribble:
            for i in range(len(data)):
                self.writer.write(data[i : i + 1])
                await self.writer.drain()
                if i % 64 == 0:
                    await asyncio.sleep(0)
        else:
            self.writer.write(data)
            await self.writer.drain()

    async def wait_replies(self, count: int, timeout: float = 10.0) -> list[bytes]:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.replies) < count and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        return list(self.replies)

    async def close(self) -> None:
        self.writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await self._task


async def scrape(port: int) -> dict[str, float]:
    """Fetch /metrics (off the event loop that serves it) as {'name{labels}': value}."""
    return await asyncio.to_thread(_scrape, port)


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        out[key] = float(value)
    return out


def metric(samples: dict[str, float], name: str, **labels: str) -> float:
    """The value of one sample; labels must match exactly (order-insensitive)."""
    want = dict(labels.items())
    for key, value in samples.items():
        m = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})?", key)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if got == want:
            return value
    return 0.0


def wires(vectors: Sequence[dict[str, Any]], numbers: Iterable[int]) -> list[bytes]:
    """The wire bytes of vectors by their 1-based line numbers."""
    return [vectors[n - 1]["wire"].encode("utf-8") for n in numbers]
