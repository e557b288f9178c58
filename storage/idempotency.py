"""Deciding, per batch, whether plain inserts are safe, and collapsing duplicates in a batch.

A resent or backfilled packet must add no row (design.md section 4), but the upsert that
guarantees it runs at about half the rate of a plain COPY (performance.md section 4). Most
batches cannot hold a duplicate: devices send each record once, in time order. The
``Watermark`` remembers, per (mn, cn), the newest ``data_time`` this process has committed;
a batch whose value rows are all newer than that, each (mn, cn, data_time) slot coming
from one entry, goes by plain insert. Anything else (a resend, a backfill, split parts spread over
two batches, the first batch after a restart that another process already wrote) takes the
idempotent path, and a plain insert that still hits a unique key is redone by it.

Both stores (PostgreSQL and SQLite) use these helpers, so the two behave the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, TypeVar, cast

from storage.base import Entry, PresenceRow

MAX_WATERMARK_KEYS: Final = 1_000_000
"""(mn, cn) pairs remembered. A 12,000-device fleet uses ~12,000 x 6 CNs = 72,000; past the
bound the map is cleared (about 100 MB), which only sends some batches to the plain path
that then may fall back once; memory stays bounded whatever MNs devices invent."""

_NEVER: Final = -(2**63)

R = TypeVar("R", bound=tuple[object, ...])


class Watermark:
    """Newest committed ``data_time`` per (mn, cn) in this process."""

    __slots__ = ("_newest",)

    def __init__(self) -> None:
        self._newest: dict[tuple[str, int], int] = {}

    def __len__(self) -> int:
        return len(self._newest)

    def check(self, entries: Sequence[Entry]) -> tuple[bool, dict[tuple[str, int], int]]:
        """(fresh, newest data_time per (mn, cn) in the batch).

        ``fresh``: every value row is newer than the watermark and no (table, mn, cn,
        data_time) slot appears in two entries, so plain inserts cannot meet a row this
        process wrote. Within one entry's run of a slot the codes are taken as unique
        (``storage.rows`` builds them from one dict per record); were they not, the plain
        insert meets the unique key and the store redoes the batch by the idempotent
        path: a wrong guess costs time, never a row. Checking slots instead of keys
        keeps the per-row cost to a few comparisons.
        """
        newest = self._newest
        maxima: dict[tuple[str, int], int] = {}
        slots: dict[tuple[int, str, int, int], int] = {}
        fresh = True
        for index, entry in enumerate(entries):
            for tag, rows in ((0, entry.readings), (1, entry.infos), (2, entry.statuses)):
                cur_mn: str | None = None
                cur_cn = 0
                cur_t = _NEVER
                floor = _NEVER
                for r in rows:
                    t = r[0]
                    mn = r[1]
                    cn = r[2]
                    if t == cur_t and cn == cur_cn and mn == cur_mn:
                        continue
                    if cn != cur_cn or mn != cur_mn:
                        cur_mn = mn
                        cur_cn = cn
                        floor = newest.get((mn, cn), _NEVER)
                    cur_t = t
                    if t <= floor:
                        fresh = False
                    if slots.setdefault((tag, mn, cn, t), index) != index:
                        fresh = False
                    if t > maxima.get((mn, cn), _NEVER):
                        maxima[(mn, cn)] = t
        return fresh, maxima

    def advance(self, maxima: dict[tuple[str, int], int]) -> None:
        """Record a committed batch's newest times."""
        newest = self._newest
        if len(newest) + len(maxima) > MAX_WATERMARK_KEYS:
            newest.clear()
        for key, t in maxima.items():
            if t > newest.get(key, _NEVER):
                newest[key] = t

    def clear(self) -> None:
        self._newest.clear()


def rounds(rows: Sequence[R], key_width: int, received_index: int) -> list[list[R]]:
    """Split rows into rounds in which each key appears at most once.

    Versions of one key are ordered by ``received_at`` (ties keep batch order) and go into
    consecutive rounds, so applying the rounds in order replays the versions as they
    arrived: every change bumps ``revision`` once, every repeat counts as a duplicate, and
    the newest version wins. A batch without repeated keys is a single round (the usual
    case: the idempotent path then costs one statement per table).
    """
    by_key: dict[tuple[object, ...], list[R]] = {}
    repeated = False
    for r in rows:
        k = r[:key_width]
        versions = by_key.get(k)
        if versions is None:
            by_key[k] = [r]
        else:
            versions.append(r)
            repeated = True
    if not repeated:
        return [list(rows)]
    out: list[list[R]] = []
    for versions in by_key.values():
        if len(versions) > 1:
            versions.sort(key=lambda v: cast(int, v[received_index]))
        for i, v in enumerate(versions):
            if i == len(out):
                out.append([])
            out[i].append(v)
    return out


def merge_presence(rows: Sequence[PresenceRow]) -> list[PresenceRow]:
    """One row per MN: earliest first_seen, latest last_seen (and its peer), summed counters."""
    merged: dict[str, PresenceRow] = {}
    for r in rows:
        cur = merged.get(r.mn)
        if cur is None:
            merged[r.mn] = r
            continue
        newer = r if r.last_seen_us >= cur.last_seen_us else cur
        times = [t for t in (cur.last_data_time_us, r.last_data_time_us) if t is not None]
        merged[r.mn] = PresenceRow(
            r.mn,
            min(cur.first_seen_us, r.first_seen_us),
            newer.last_seen_us,
            max(times) if times else None,
            newer.peer,
            newer.worker,
            newer.version,
            cur.frames + r.frames,
            cur.rejects + r.rejects,
        )
    return list(merged.values())
