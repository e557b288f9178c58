"""The local spool: order, durability across reopen, torn and corrupt records, size bound,
segment rotation and deletion, the directory lock."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from storage.base import Entry, ForwardTo, FrameRow, InfoRow, ReadingRow, StatusRow
from storage.spool import (
    RECORD,
    SEGMENT_HEADER,
    Spool,
    SpoolError,
    SpoolFull,
    spool_directory,
)

T0 = 1_710_469_800_000_000
MB = 1024 * 1024


def make_entry(i: int, readings: int = 3) -> Entry:
    """Entry ``i``: a frame whose peer names it, ``readings`` reading rows, one info and
    one status row (every row type and every column type goes through the spool)."""
    mn = f"8888888000000000000{i % 100_000:05d}"
    frame = FrameRow(
        T0 + i, f"e{i}", 0, mn, "32", "2011", f"Q{i}", True, None, ("q1",), b"##raw\x00\xff%d" % i
    )
    rows = [
        ReadingRow(
            T0 - 60_000_000 * i,
            mn,
            2011,
            f"w0{k}",
            f"w0{k}",
            i + k / 8,
            None,
            -1.5,
            None,
            None,
            None,
            None,
            None,
            1e300,
            "N",
            None,
            T0,
            '{"X": "1"}',
            f"Rtd={i}",
            T0 + i,
        )
        for k in range(readings)
    ]
    info = InfoRow(T0, mn, 3020, "", "i12001", "on", None, T0 + i)
    status = StatusRow(T0, mn, 2021, "SB1", "RS", "1", 1.0, T0 + i)
    return Entry(frame, rows, [info], [status])


def ident(e: Entry) -> int:
    assert e.frame is not None
    return int(e.frame.peer[1:])


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("seg-*.spool"))


def new_spool(directory: Path, *, max_bytes: int = 64 * MB, segment_bytes: int = MB) -> Spool:
    return Spool(directory, max_bytes=max_bytes, segment_bytes=segment_bytes)


async def drain_all(spool: Spool, max_rows: int = 1_000_000) -> list[Entry]:
    out: list[Entry] = []
    while spool.batches:
        batch = await spool.read(max_rows)
        out.extend(batch.entries)
        await spool.ack(batch)
    return out


async def test_append_read_ack_in_order_and_files_deleted(tmp_path: Path) -> None:
    spool = new_spool(tmp_path / "s")
    await spool.open()
    try:
        batches = [[make_entry(3 * b + k) for k in range(3)] for b in range(4)]
        for batch in batches:
            await spool.append(batch)
        assert (spool.batches, spool.rows) == (4, 4 * 3 * 6)
        first = await spool.read(max_rows=1)  # at least one batch, even if larger
        assert [ident(e) for e in first.entries] == [0, 1, 2]
        assert first.entries == batches[0]  # exact round trip, every column
        await spool.ack(first)
        assert spool.batches == 3
        rest = await spool.read(max_rows=36)  # two more batches of 18 rows fit
        assert [ident(e) for e in rest.entries] == [3, 4, 5, 6, 7, 8]
        await spool.ack(rest)
        last = await spool.read(max_rows=1_000)
        assert [ident(e) for e in last.entries] == [9, 10, 11]
        assert (await spool.read(1_000)).records == []  # nothing more
        await spool.ack(last)
        stats = spool.stats()
        assert (stats.batches, stats.rows, stats.bytes, stats.segments) == (0, 0, 0, 0)
        assert (stats.appended_batches, stats.drained_batches) == (4, 4)
        assert stats.appended_rows == stats.drained_rows == 72
        assert stats.drain_rows_per_s > 0
        assert segments(tmp_path / "s") == []  # an empty spool keeps no files
        await spool.append([make_entry(99)])  # and starts a new segment
        assert len(segments(tmp_path / "s")) == 1
    finally:
        await spool.close()


async def test_entry_without_frame_round_trips(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    await spool.open()
    entry = make_entry(1)
    bare = Entry(None, entry.readings, [], [])
    await spool.append([bare])
    batch = await spool.read(100)
    assert batch.entries == [bare]
    assert batch.rows == bare.row_count == 3
    await spool.close()


async def test_forward_targets_survive_the_spool(tmp_path: Path) -> None:
    """A spooled frame keeps its upstreams: the drain queues it in the outbox like a direct
    write would (the device had its reply already and never resends it)."""
    spool = new_spool(tmp_path)
    await spool.open()
    entry = make_entry(2)
    forwarded = Entry(entry.frame, entry.readings, [], [], ForwardTo(("city", "province"), True))
    await spool.append([forwarded, entry])
    await spool.close()
    again = new_spool(tmp_path)
    await again.open()  # read back from disk, as after a restart
    batch = await again.read(100)
    assert batch.entries == [forwarded, entry]
    assert batch.entries[0].forward == ForwardTo(("city", "province"), True)
    assert batch.entries[1].forward is None
    assert batch.rows == forwarded.row_count + entry.row_count
    await again.close()


async def test_appended_batches_survive_reopen(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    await spool.open()
    for b in range(5):
        await spool.append([make_entry(b)])
    # The process dies without closing: a copy of the files is what a new process finds.
    crashed = tmp_path.parent / f"{tmp_path.name}-copy"
    shutil.copytree(tmp_path, crashed)
    await spool.close()

    again = new_spool(crashed)
    await again.open()
    try:
        stats = again.stats()
        assert (stats.recovered_batches, stats.recovered_rows) == (5, 30)
        assert (stats.batches, stats.torn_records) == (5, 0)
        assert [ident(e) for e in await drain_all(again)] == [0, 1, 2, 3, 4]
        await again.append([make_entry(7)])  # never into a recovered segment
        assert len(segments(crashed)) == 1
    finally:
        await again.close()


async def test_torn_tail_is_skipped_and_counted(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    await spool.open()
    for b in range(3):
        await spool.append([make_entry(b)])
    await spool.close()
    (seg,) = segments(tmp_path)
    size = seg.stat().st_size
    with seg.open("r+b") as f:  # a crash in the middle of writing the last record
        f.truncate(size - 25)

    again = new_spool(tmp_path)
    await again.open()
    stats = again.stats()
    assert (stats.batches, stats.torn_records) == (2, 1)
    assert stats.torn_bytes > 0
    assert [ident(e) for e in await drain_all(again)] == [0, 1]
    assert again.stats().torn_records == 1  # counted once, not again while draining
    assert segments(tmp_path) == []
    await again.close()


@pytest.mark.parametrize(
    ("where", "what"),
    [
        (0, "marker"),
        (RECORD.size - 8, "length"),
        (RECORD.size - 4, "checksum"),
        (RECORD.size + 40, "payload"),
    ],
)
async def test_corrupt_record_is_skipped_and_its_neighbours_kept(
    tmp_path: Path, where: int, what: str
) -> None:
    spool = new_spool(tmp_path)
    await spool.open()
    for b in range(3):
        await spool.append([make_entry(b)])
    await spool.close()
    (seg,) = segments(tmp_path)
    data = bytearray(seg.read_bytes())
    second = _record_offsets(bytes(data))[1]
    data[second + where] ^= 0xFF  # one flipped byte in the middle record's {what}
    seg.write_bytes(bytes(data))

    again = new_spool(tmp_path)
    await again.open()
    assert (again.batches, again.stats().torn_records) == (2, 1), what
    assert [ident(e) for e in await drain_all(again)] == [0, 2]
    await again.close()


def _record_offsets(data: bytes) -> list[int]:
    offsets = []
    off = len(SEGMENT_HEADER)
    while off < len(data):
        offsets.append(off)
        _, length, _ = RECORD.unpack_from(data, off)
        off += RECORD.size + length
    return offsets


async def test_corruption_after_append_is_skipped_while_draining(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    await spool.open()
    for b in range(3):
        await spool.append([make_entry(b)])
    (seg,) = segments(tmp_path)
    second = _record_offsets(seg.read_bytes())[1]
    with seg.open("r+b") as f:  # the disk loses a byte of an fsynced record
        f.seek(second + RECORD.size + 30)
        byte = f.read(1)
        f.seek(second + RECORD.size + 30)
        f.write(bytes([byte[0] ^ 0x55]))
    assert [ident(e) for e in await drain_all(spool)] == [0, 2]
    stats = spool.stats()
    assert (stats.torn_records, stats.batches, stats.rows, stats.segments) == (1, 0, 0, 0)
    await spool.close()


async def test_torn_segment_header_and_empty_segments_are_removed(tmp_path: Path) -> None:
    (tmp_path / "seg-0000000000000001.spool").write_bytes(SEGMENT_HEADER[:5])
    (tmp_path / "seg-0000000000000002.spool").write_bytes(SEGMENT_HEADER)
    spool = new_spool(tmp_path)
    await spool.open()
    assert spool.batches == 0
    assert spool.stats().torn_records == 1  # the torn header
    assert segments(tmp_path) == []
    await spool.append([make_entry(1)])
    assert [p.name for p in segments(tmp_path)] == ["seg-0000000000000003.spool"]
    await spool.close()


async def test_size_bound_refuses_appends_until_a_segment_is_drained(tmp_path: Path) -> None:
    spool = new_spool(tmp_path, max_bytes=64 * 1024, segment_bytes=16 * 1024)
    await spool.open()
    batch = [make_entry(i) for i in range(4)]
    appended = 0

    async def fill() -> None:
        nonlocal appended
        for _ in range(1_000):
            await spool.append(batch)
            appended += 1

    with pytest.raises(SpoolFull):
        await fill()
    assert appended > 4
    stats = spool.stats()
    assert stats.bytes <= 64 * 1024
    assert (stats.batches, stats.refused_full, stats.has_room) == (appended, 1, False)
    assert not spool.has_room()
    size_before = sum(p.stat().st_size for p in segments(tmp_path))
    assert size_before == stats.bytes  # the refused batch wrote nothing
    # Draining the first segment's batches deletes it and makes room again.
    files = len(segments(tmp_path))
    while len(segments(tmp_path)) == files:
        assert not spool.has_room()
        await spool.ack(await spool.read(1))
    assert spool.has_room()
    assert spool.batches > 0
    await spool.append(batch)
    await spool.close()


async def test_segments_rotate_and_drained_ones_are_deleted(tmp_path: Path) -> None:
    spool = new_spool(tmp_path, max_bytes=8 * MB, segment_bytes=8 * 1024)
    await spool.open()
    for b in range(40):
        await spool.append([make_entry(2 * b), make_entry(2 * b + 1)])
    files = segments(tmp_path)
    assert len(files) > 3
    assert spool.stats().segments == len(files)
    assert spool.bytes == sum(p.stat().st_size for p in files)
    seen: list[int] = []
    while spool.batches > 20:
        batch = await spool.read(1)
        seen.extend(ident(e) for e in batch.entries)
        await spool.ack(batch)
    left = segments(tmp_path)
    assert 0 < len(left) < len(files)
    assert left == files[len(files) - len(left) :]  # the oldest went first
    assert spool.bytes == sum(p.stat().st_size for p in left)
    seen.extend(ident(e) for e in await drain_all(spool, max_rows=50))
    assert seen == list(range(80))
    assert segments(tmp_path) == []
    await spool.close()


async def test_one_directory_one_process(tmp_path: Path) -> None:
    first = new_spool(tmp_path)
    await first.open()
    second = new_spool(tmp_path)
    with pytest.raises(SpoolError, match="in use"):
        await second.open()
    await first.close()
    await second.open()  # free again once the first is closed
    await second.close()


async def test_unwritable_directory_fails_at_open(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SpoolError):
        await new_spool(blocker / "spool").open()


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="segment_bytes"):
        Spool("x", max_bytes=MB, segment_bytes=MB)


def test_default_directories() -> None:
    from config.settings import StorageConfig

    sqlite = StorageConfig(sqlite_path="/data/gw.sqlite3")
    assert spool_directory(sqlite, 0) == Path("/data/gw.sqlite3-spool/worker-0")
    pg = StorageConfig(dsn="postgresql://gw@db/hj212")  # type: ignore[arg-type]
    assert spool_directory(pg, 2) == Path("hj212-spool/worker-2")
    chosen = StorageConfig(spool_dir="/var/spool/hj212")
    assert spool_directory(chosen, 1) == Path("/var/spool/hj212/worker-1")
    assert os.sep in str(spool_directory(chosen))
