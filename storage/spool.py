"""The local durable spool: batches the database cannot take now, kept on disk until it can.

When the database is down or slower than ``storage.spool_after_s``, the writer appends the
batch here instead; once ``append`` returns, the batch is fsynced, which counts as durable
for the reply rule (design.md section 2), so the devices get their replies. A drain task
(storage/writer.py) later reads the batches back in order, writes them to the database
and acknowledges them; fully drained segment files are then deleted.

Layout: one directory per worker process, locked with ``flock`` on ``LOCK`` so two
processes never share it. Segment files ``seg-<16-digit sequence>.spool`` are written
append-only; each starts with ``SEGMENT_HEADER`` and holds records::

    [marker: 4 bytes][length: u32 LE][crc32 of payload: u32 LE][payload: length bytes]
    payload = [entries: u32 LE][rows: u32 LE][marshal of the entries as plain tuples]

The marker is the ``[length][crc32][payload]`` record's sync word: after a corrupt record
the next good one is found by searching for it (``bytes.find``), instead of trying a
checksum at every byte. The entries are plain tuples of ints, floats, strings, bytes,
None and bools (storage/base.py), so ``marshal`` (fast, in the standard library, and
unable to build arbitrary objects, unlike pickle) serialises them; the checksum is
verified before anything is unmarshalled. The counts in front of the marshal data give
the spool's depth in rows at open without decoding every batch.

Durability: one ``fdatasync`` per appended batch; a new segment is fsynced with its header
and then its directory, before a record goes into it. A segment is never appended to
after a restart (a new one is started), so a torn tail stays where the crash left it.

Recovery at open: every segment is read and every record's checksum verified. A torn or
corrupt record (a crash during an append, a flipped byte) is skipped and counted
(``torn_records``, ``torn_bytes``); the records around it are kept. A torn record was
never acknowledged to anyone: its append did not return, so no reply went out for it.

Redelivery: a batch is deleted only when its whole segment is drained, and a crash
between a database commit and the acknowledgement sends the batch again after the
restart. Value rows are idempotent (storage/base.py), so that adds nothing to
``hj212.reading``; the frame archive may hold such a frame twice.

Threading: every file operation, the (de)serialisation included, runs on one dedicated
thread (as storage/sqlite.py does), so the event loop never waits for the disk. That
thread owns the segment list and the cursors; the loop only reads counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import marshal
import os
import re
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeVar

from config.settings import StorageConfig
from storage.base import (
    Entry,
    ForwardTo,
    FrameRow,
    InfoRow,
    ReadingRow,
    StatusRow,
    StorageError,
)

__all__ = [
    "SEGMENT_HEADER",
    "Spool",
    "SpoolBatch",
    "SpoolError",
    "SpoolFull",
    "SpoolStats",
    "orphaned_spool_directories",
    "spool_directory",
]

T = TypeVar("T")

SEGMENT_HEADER: Final = b"HJ212-SPOOL\x00\x00\x00\x00\x01"
"""First 16 bytes of every segment: a name for ``file``/``head`` and the format version."""
RECORD: Final = struct.Struct("<4sII")
RECORD_MARKER: Final = b"\xa5\x5a\xc3\x3c"
"""Not ASCII and not a marshal type code: rare inside payloads, so a search finds few
false starts (each is then rejected by its length and checksum)."""
PAYLOAD_HEAD: Final = struct.Struct("<II")
MARSHAL_VERSION: Final = 4
"""marshal's format 4 has been stable since Python 3.4; readers of later versions read it."""
MAX_RECORD_BYTES: Final = 64 * 1024 * 1024
"""A record longer than this is corrupt by definition: a 5,000-row batch encodes to about
2 MB, and ``append`` splits larger batches into several records under this size."""
RATE_WINDOW_S: Final = 10.0
"""The drain rate is averaged over this many seconds: long enough to smooth single
batches, short enough to show a drain starting and ending."""
LOCK_NAME: Final = "LOCK"
_SEGMENT_NAME: Final = re.compile(r"^seg-(\d{16})\.spool$")


class SpoolError(StorageError):
    """The spool cannot take the batch (disk error, directory in use)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retriable=True, kind="resources")


class SpoolFull(SpoolError):
    """``append`` would take the spool past ``max_bytes``; nothing was written."""


def spool_directory(cfg: StorageConfig, worker: int = 0) -> Path:
    """Where worker ``worker`` spools: ``storage.spool_dir``, or by default ``./hj212-spool``
    with PostgreSQL and ``<sqlite_path>-spool`` next to the SQLite file, then one
    subdirectory per worker (each process owns and locks its own)."""
    if cfg.spool_dir is not None:
        base = Path(cfg.spool_dir)
    elif cfg.dsn is None:
        base = Path(f"{cfg.sqlite_path}-spool")
    else:
        base = Path("hj212-spool")
    return base / f"worker-{worker}"


def orphaned_spool_directories(cfg: StorageConfig, workers: int) -> list[Path]:
    """Spool directories of workers this gateway no longer runs (``worker-N`` with N at or
    above ``workers``, left by a run with more workers) that still hold segment files:
    replied rows that only a drain brings to the database."""
    base = spool_directory(cfg, 0).parent
    out = []
    with contextlib.suppress(OSError):
        for path in sorted(base.iterdir()):
            m = re.fullmatch(r"worker-(\d+)", path.name)
            if m and int(m.group(1)) >= workers and any(path.glob("seg-*.spool")):
                out.append(path)
    return out


@dataclass(slots=True)
class SpoolStats:
    """A snapshot of the spool (gateway/ exports it as metrics)."""

    batches: int
    """Batches on disk not yet drained into the database."""
    rows: int
    bytes: int
    """Bytes of the segment files on disk (what ``max_bytes`` bounds)."""
    max_bytes: int
    segments: int
    has_room: bool
    """False after an append was refused for size, until a drained segment is deleted."""
    appended_batches: int
    appended_rows: int
    drained_batches: int
    drained_rows: int
    drain_rows_per_s: float
    """Rows drained per second over the last ``RATE_WINDOW_S``."""
    recovered_batches: int
    """Batches found on disk at open (left by an earlier run)."""
    recovered_rows: int
    torn_records: int
    """Torn or corrupt records skipped (at open or while draining)."""
    torn_bytes: int
    refused_full: int
    """Appends refused because the spool was full."""
    errors: int
    """Appends that failed on a disk error."""


@dataclass(slots=True)
class SpoolRecord:
    """One batch as read back: its entries and where it ends."""

    entries: list[Entry]
    rows: int
    seq: int
    """The segment holding it."""
    end: int
    """Offset just past it in that segment."""


@dataclass(slots=True)
class SpoolBatch:
    """Records read by one ``read`` call; ``ack`` it once they are in the database."""

    records: list[SpoolRecord]
    end: tuple[int, int]
    """(segment, offset) up to which this batch consumed the spool (corrupt bytes
    skipped after the last record included)."""

    @property
    def entries(self) -> list[Entry]:
        return [e for r in self.records for e in r.entries]

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.records)

    def head(self) -> SpoolBatch:
        """The first record alone (acknowledged on its own)."""
        first = self.records[0]
        return SpoolBatch([first], (first.seq, first.end))

    def tail(self) -> SpoolBatch:
        """Every record but the first."""
        return SpoolBatch(self.records[1:], self.end)


@dataclass(slots=True)
class _Segment:
    seq: int
    path: Path
    size: int
    records: int = 0
    rows: int = 0
    drained_records: int = 0
    drained_rows: int = 0
    known_bad: dict[int, int] = field(default_factory=dict)
    """Corrupt spans (start -> end) already counted at open, skipped silently later."""


# -- encoding ----------------------------------------------------------------------------


def _encode(entries: Sequence[Entry]) -> list[tuple[bytes, int, int]]:
    """``(payload, entries, rows)`` per record; batches too large for one are split."""
    body = tuple(
        (
            None if e.frame is None else tuple(e.frame),
            tuple(map(tuple, e.readings)),
            tuple(map(tuple, e.infos)),
            tuple(map(tuple, e.statuses)),
            None if e.forward is None else (tuple(e.forward.upstreams), e.forward.confirm),
        )
        for e in entries
    )
    data = marshal.dumps(body, MARSHAL_VERSION)
    if len(data) + PAYLOAD_HEAD.size > MAX_RECORD_BYTES:
        if len(entries) == 1:
            raise SpoolError(f"an entry of {len(data)} bytes is larger than a spool record")
        half = len(entries) // 2
        return _encode(entries[:half]) + _encode(entries[half:])
    rows = sum(e.row_count for e in entries)
    return [(PAYLOAD_HEAD.pack(len(entries), rows) + data, len(entries), rows)]


def _decode(payload: bytes) -> list[Entry]:
    """The entries of a payload whose checksum matched; ValueError if it does not decode."""
    count, _ = PAYLOAD_HEAD.unpack_from(payload)
    try:
        # Our own records, their checksum verified: never bytes from the network.
        body = marshal.loads(memoryview(payload)[PAYLOAD_HEAD.size :])  # noqa: S302
        entries = [
            Entry(
                None if item[0] is None else FrameRow._make(item[0]),
                [ReadingRow._make(r) for r in item[1]],
                [InfoRow._make(r) for r in item[2]],
                [StatusRow._make(r) for r in item[3]],
                # The upstreams the frame is forwarded to (absent in records written
                # before forwarding existed: four items).
                None if len(item) < 5 or item[4] is None else ForwardTo(*item[4]),
            )
            for item in body
        ]
    except (EOFError, TypeError, ValueError) as exc:
        raise ValueError(f"undecodable spool payload: {exc}") from exc
    if len(entries) != count:
        raise ValueError("spool payload entry count mismatch")
    return entries


def _record_at(buf: bytes | memoryview, off: int) -> tuple[int, int] | None:
    """``(end, rows)`` of a valid record starting at ``off`` in ``buf``, else None."""
    if off + RECORD.size > len(buf):
        return None
    marker, length, crc = RECORD.unpack_from(buf, off)
    end = off + RECORD.size + length
    if marker != RECORD_MARKER or length < PAYLOAD_HEAD.size or end > len(buf):
        return None
    if length > MAX_RECORD_BYTES:
        return None
    if zlib.crc32(buf[off + RECORD.size : end]) != crc:
        return None
    _, rows = PAYLOAD_HEAD.unpack_from(buf, off + RECORD.size)
    return end, rows


def _resync(buf: bytes, start: int) -> int:
    """The offset of the next valid record after ``start``, or ``len(buf)``."""
    pos = start
    while True:
        pos = buf.find(RECORD_MARKER, pos + 1)
        if pos < 0:
            return len(buf)
        if _record_at(buf, pos) is not None:
            return pos


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


# -- the spool ----------------------------------------------------------------------------


class Spool:
    """An append-only, checksummed, fsynced queue of batches on disk.

    One producer (``append``) and one consumer (``read`` then ``ack``, in order). Bounds:
    ``max_bytes`` of segment files (appends beyond it raise ``SpoolFull``), segments of
    about ``segment_bytes`` (disk space comes back one drained segment at a time).
    """

    def __init__(self, directory: str | Path, *, max_bytes: int, segment_bytes: int) -> None:
        if segment_bytes < 4096 or max_bytes < 2 * segment_bytes:
            raise ValueError("need segment_bytes >= 4096 and max_bytes >= 2 * segment_bytes")
        self.directory = Path(directory)
        self._max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        self._executor: ThreadPoolExecutor | None = None
        self._lock_fd: int | None = None
        self._counters = threading.Lock()

        self._segments: deque[_Segment] = deque()
        self._next_seq = 1
        self._active: _Segment | None = None
        self._active_fd: int | None = None
        self._read_seq = 0
        self._read_off = 0
        self._read_fd: tuple[int, int] | None = None
        """(segment, fd) of the segment being read."""

        self._records = 0
        self._rows = 0
        self._bytes = 0
        self._full = False
        self._failing = False
        self._appended_records = 0
        self._appended_rows = 0
        self._drained_records = 0
        self._drained_rows = 0
        self._drains: deque[tuple[float, int]] = deque()
        self._recovered_records = 0
        self._recovered_rows = 0
        self._torn_records = 0
        self._torn_bytes = 0
        self._refused_full = 0
        self._errors = 0

    # -- the thread ------------------------------------------------------------------------

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise SpoolError("spool is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def open(self) -> None:
        """Lock the directory (created if missing) and recover what an earlier run left."""
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hj212-spool")
        try:
            await self._run(self._open_sync)
        except OSError as exc:
            await self.close()
            raise SpoolError(f"spool {self.directory}: {exc}") from exc
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        executor = self._executor
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_sync)
        finally:
            self._executor = None
            executor.shutdown(wait=True)

    async def append(self, entries: Sequence[Entry]) -> None:
        """Write ``entries`` as one batch and fsync it: durable when this returns.

        Raises ``SpoolFull`` (nothing written) or ``SpoolError`` (disk error; the batch
        may or may not be on disk, and is to be treated as not durable).
        """
        if not entries:
            return
        await self._run(lambda: self._append_sync(entries))

    async def read(self, max_rows: int) -> SpoolBatch:
        """The next batches in append order, at least one and then up to ``max_rows`` rows
        in all; an empty batch when nothing is left. Corrupt records are skipped."""
        return await self._run(lambda: self._read_sync(max_rows))

    async def ack(self, batch: SpoolBatch) -> None:
        """``batch`` (and everything before it) is in the database: forget it."""
        await self._run(lambda: self._ack_sync(batch))

    # -- what the loop reads ---------------------------------------------------------------

    @property
    def batches(self) -> int:
        """Batches appended (or recovered) and not yet acknowledged."""
        return self._records

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def bytes(self) -> int:
        return self._bytes

    def has_room(self) -> bool:
        """The last append did not fail (for size since the last deletion, or on the disk)."""
        return not self._full and not self._failing and self._bytes < self._max_bytes

    def stats(self) -> SpoolStats:
        now = time.monotonic()
        with self._counters:
            drains = self._drains
            while drains and drains[0][0] < now - RATE_WINDOW_S:
                drains.popleft()
            rate = sum(n for _, n in drains) / RATE_WINDOW_S
            return SpoolStats(
                batches=self._records,
                rows=self._rows,
                bytes=self._bytes,
                max_bytes=self._max_bytes,
                segments=len(self._segments),
                has_room=self.has_room(),
                appended_batches=self._appended_records,
                appended_rows=self._appended_rows,
                drained_batches=self._drained_records,
                drained_rows=self._drained_rows,
                drain_rows_per_s=rate,
                recovered_batches=self._recovered_records,
                recovered_rows=self._recovered_rows,
                torn_records=self._torn_records,
                torn_bytes=self._torn_bytes,
                refused_full=self._refused_full,
                errors=self._errors,
            )

    # -- open and recovery (on the thread) -------------------------------------------------

    def _open_sync(self) -> None:
        directory = self.directory
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            _fsync_dir(directory.parent)
        fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolError(
                f"spool directory {directory} is in use by another process "
                "(give each gateway its own storage.spool_dir)"
            ) from None
        self._lock_fd = fd
        found = sorted(
            (int(m.group(1)), p)
            for p in directory.iterdir()
            if (m := _SEGMENT_NAME.match(p.name)) is not None
        )
        for seq, path in found:
            self._recover(seq, path)
        self._next_seq = (found[-1][0] + 1) if found else 1
        with self._counters:
            self._recovered_records = self._records
            self._recovered_rows = self._rows

    def _recover(self, seq: int, path: Path) -> None:
        buf = path.read_bytes()
        seg = _Segment(seq, path, len(buf))
        off = len(SEGMENT_HEADER)
        if not buf.startswith(SEGMENT_HEADER):
            # Torn by a crash right after the file was created (then it holds no record:
            # none is written before the header is fsynced), or damaged: count it and
            # keep whatever records follow.
            self._count_torn(min(len(buf), off))
        while off < len(buf):
            found = _record_at(buf, off)
            if found is None:
                nxt = _resync(buf, off)
                seg.known_bad[off] = nxt
                self._count_torn(nxt - off)
                off = nxt
                continue
            off, rows = found
            seg.records += 1
            seg.rows += rows
        if seg.records == 0:
            path.unlink()  # nothing to drain in it
            return
        self._segments.append(seg)
        with self._counters:
            self._records += seg.records
            self._rows += seg.rows
            self._bytes += seg.size

    def _count_torn(self, nbytes: int) -> None:
        with self._counters:
            self._torn_records += 1
            self._torn_bytes += nbytes

    def _close_sync(self) -> None:
        for fd in (self._active_fd, self._read_fd[1] if self._read_fd else None):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._active_fd = None
        self._active = None
        self._read_fd = None
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # -- append (on the thread) ------------------------------------------------------------

    def _writable_segment(self, need: int) -> tuple[_Segment, int]:
        seg, fd = self._active, self._active_fd
        if seg is not None and fd is not None and seg.size < self._segment_bytes:
            return seg, fd
        if self._bytes + len(SEGMENT_HEADER) + need > self._max_bytes:
            self._refuse_full()
        self._close_active()
        seq = self._next_seq
        self._next_seq += 1
        path = self.directory / f"seg-{seq:016d}.spool"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            _write_all(fd, SEGMENT_HEADER)
            os.fsync(fd)
            _fsync_dir(self.directory)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        seg = _Segment(seq, path, len(SEGMENT_HEADER))
        self._segments.append(seg)
        with self._counters:
            self._bytes += seg.size
        self._active, self._active_fd = seg, fd
        return seg, fd

    def _refuse_full(self) -> None:
        with self._counters:
            self._full = True
            self._refused_full += 1
        raise SpoolFull(f"spool {self.directory} is full ({self._bytes} of {self._max_bytes} B)")

    def _close_active(self) -> None:
        if self._active_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._active_fd)
        self._active = None
        self._active_fd = None

    def _append_sync(self, entries: Sequence[Entry]) -> None:
        records = _encode(entries)
        data = b"".join(
            RECORD.pack(RECORD_MARKER, len(p), zlib.crc32(p)) + p for p, _, _ in records
        )
        if self._bytes + len(data) > self._max_bytes:
            self._refuse_full()
        try:
            seg, fd = self._writable_segment(len(data))
            try:
                _write_all(fd, data)
                os.fdatasync(fd)
            except OSError:
                self._abandon(seg, fd)
                raise
        except OSError as exc:
            with self._counters:
                self._errors += 1
                self._failing = True
            raise SpoolError(f"spool {self.directory}: append failed: {exc}") from exc
        n = len(records)
        rows = sum(r for _, _, r in records)
        seg.size += len(data)
        seg.records += n
        seg.rows += rows
        with self._counters:
            self._failing = False
            self._bytes += len(data)
            self._records += n
            self._rows += rows
            self._appended_records += n
            self._appended_rows += rows

    def _abandon(self, seg: _Segment, fd: int) -> None:
        """After a failed write: cut the segment back to its last whole record (or leave
        the torn bytes for recovery to skip) and start a new segment next time."""
        with contextlib.suppress(OSError):
            os.ftruncate(fd, seg.size)
        with contextlib.suppress(OSError):
            grown = os.fstat(fd).st_size - seg.size
            if grown > 0:
                seg.size += grown
                with self._counters:
                    self._bytes += grown
        self._close_active()

    # -- read and ack (on the thread) ------------------------------------------------------

    def _segment(self, seq: int) -> _Segment | None:
        for seg in self._segments:
            if seg.seq >= seq:
                return seg
        return None

    def _fd_for(self, seg: _Segment) -> int:
        if self._read_fd is not None and self._read_fd[0] == seg.seq:
            return self._read_fd[1]
        self._close_read_fd()
        fd = os.open(seg.path, os.O_RDONLY)
        self._read_fd = (seg.seq, fd)
        return fd

    def _close_read_fd(self) -> None:
        if self._read_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._read_fd[1])
            self._read_fd = None

    def _read_sync(self, max_rows: int) -> SpoolBatch:
        start = (self._read_seq, self._read_off)
        try:
            return self._read_records(max_rows)
        except BaseException:
            # A disk error part way: the records read so far are not returned, so the
            # cursor goes back to where this read began and the next read starts there.
            self._read_seq, self._read_off = start
            self._close_read_fd()
            raise

    def _read_records(self, max_rows: int) -> SpoolBatch:
        out: list[SpoolRecord] = []
        rows = 0
        while True:
            seg = self._segment(self._read_seq)
            if seg is None:
                break
            if seg.seq != self._read_seq:
                self._read_seq, self._read_off = seg.seq, len(SEGMENT_HEADER)
            if self._read_off >= seg.size:
                if seg is self._segments[-1]:
                    break  # everything written so far has been read
                self._read_seq, self._read_off = seg.seq + 1, len(SEGMENT_HEADER)
                continue
            bad_end = seg.known_bad.get(self._read_off)
            if bad_end is not None:
                self._read_off = bad_end
                continue
            got = self._read_record(seg, out, rows, max_rows)
            if got < 0:
                break
            rows += got
        return SpoolBatch(out, (self._read_seq, self._read_off))

    def _read_record(
        self, seg: _Segment, out: list[SpoolRecord], rows_so_far: int, max_rows: int
    ) -> int:
        """Read the record at the cursor into ``out``: its rows, 0 after skipping a
        corrupt span, -1 when it would take the batch past ``max_rows``."""
        fd = self._fd_for(seg)
        off = self._read_off
        head = os.pread(fd, RECORD.size, off)
        payload = b""
        if len(head) == RECORD.size:
            marker, length, crc = RECORD.unpack(head)
            if (
                marker == RECORD_MARKER
                and PAYLOAD_HEAD.size <= length <= MAX_RECORD_BYTES
                and off + RECORD.size + length <= seg.size
            ):
                payload = os.pread(fd, length, off + RECORD.size)
                if len(payload) != length or zlib.crc32(payload) != crc:
                    payload = b""
        if payload:
            rows = int(PAYLOAD_HEAD.unpack_from(payload)[1])
            if out and rows_so_far + rows > max_rows:
                return -1
            end = off + RECORD.size + len(payload)
            try:
                entries = _decode(payload)
            except ValueError:
                self._count_torn(end - off)
                self._read_off = end
                return 0
            out.append(SpoolRecord(entries, rows, seg.seq, end))
            self._read_off = end
            return rows
        # Corrupt since it was written (the disk, or a hand): skip to the next good record.
        rest = os.pread(fd, seg.size - off, off)
        nxt = off + _resync(rest, 0)
        self._count_torn(nxt - off)
        self._read_off = nxt
        return 0

    def _ack_sync(self, batch: SpoolBatch) -> None:
        by_seq: dict[int, list[int]] = {}
        for rec in batch.records:
            part = by_seq.setdefault(rec.seq, [0, 0])
            part[0] += 1
            part[1] += rec.rows
        now = time.monotonic()
        with self._counters:
            for seg in self._segments:
                got = by_seq.get(seg.seq)
                if got is not None:
                    seg.drained_records += got[0]
                    seg.drained_rows += got[1]
                    self._records -= got[0]
                    self._rows -= got[1]
            n = len(batch.records)
            rows = batch.rows
            self._drained_records += n
            self._drained_rows += rows
            if rows:
                self._drains.append((now, rows))
        # Every segment consumed up to its end goes, the one being appended to included:
        # the next append then starts a new segment, so an empty spool has no files.
        end_seq, end_off = batch.end
        while self._segments:
            seg = self._segments[0]
            if seg.seq > end_seq or (seg.seq == end_seq and end_off < seg.size):
                break
            self._delete(seg)

    def _delete(self, seg: _Segment) -> None:
        if self._active is seg:
            self._close_active()
        if self._read_fd is not None and self._read_fd[0] == seg.seq:
            self._close_read_fd()
        try:
            seg.path.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            # Drained, but the file stays: counted, and a restart replays its records
            # (idempotent rows), which beats a drain stopped on it.
            with self._counters:
                self._errors += 1
        self._segments.popleft()
        with self._counters:
            # Records that were counted but never came back (corrupt since written).
            self._records -= seg.records - seg.drained_records
            self._rows -= seg.rows - seg.drained_rows
            self._bytes -= seg.size
            self._full = False
