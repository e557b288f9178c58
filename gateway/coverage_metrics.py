"""Per-city coverage gauges for Prometheus, read from a cached coverage report.

The numbers come from the database (roster, presence), not from one worker's sessions,
so they describe the whole fleet: export them from one process only (worker 0, or the
process that serves the aggregated scrape), never summed across workers.

Computing coverage reads every roster and presence row (~12,000 each), which is cheap
once a minute but not on every scrape: ``CoverageCache.refresh`` recomputes it on a timer
and ``CoverageCollector`` only reads the cached result. The ``city`` label is bounded:
the 13 cities of Jiangsu plus ``unknown`` (roster rows whose city is not one of them),
each always present (0 when empty), so a series never disappears.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from storage.roster import fetch_coverage_inputs, now_us
from storage.roster_ref import UNKNOWN_CITY, Reference, load_reference
from storage.roster_report import (
    DEFAULT_SILENT_HOURS,
    CoverageCounts,
    CoverageReport,
    compute_coverage,
)

__all__ = ["COVERAGE_REFRESH_S", "CoverageCache", "CoverageCollector", "CoverageSnapshot"]

COVERAGE_REFRESH_S: Final = 60.0
"""How often the cache is recomputed: online windows are 90 s and more, so a minute-old
figure is as current as a dashboard needs, at one short query pair a minute."""


@dataclass(frozen=True, slots=True)
class CoverageSnapshot:
    taken_at_us: int
    report: CoverageReport


class CoverageCache:
    """The latest coverage report; ``refresh`` is the job to run every
    ``COVERAGE_REFRESH_S`` seconds, ``get`` the callable to hand to the collector."""

    def __init__(
        self,
        *,
        silent_hours: int = DEFAULT_SILENT_HOURS,
        ref: Reference | None = None,
        clock: Callable[[], int] = now_us,
    ) -> None:
        self._silent_hours = silent_hours
        self._ref = ref or load_reference()
        self._clock = clock
        self._snapshot: CoverageSnapshot | None = None

    async def refresh(self, conn_or_pool: Any) -> None:
        """Recompute from the database (an asyncpg pool or connection); on failure the
        previous snapshot stays, and its age gauge shows it is getting old."""
        at = self._clock()
        roster, sightings = await fetch_coverage_inputs(
            conn_or_pool, as_of_us=at, silent_hours=self._silent_hours
        )
        # Counting 12,000 devices takes ~0.15 s of CPU: off the event loop, so replies to
        # devices are not held up meanwhile.
        report = await asyncio.to_thread(
            compute_coverage,
            roster,
            sightings,
            self._ref,
            as_of_us=at,
            silent_hours=self._silent_hours,
        )
        self._snapshot = CoverageSnapshot(at, report)

    def get(self) -> CoverageSnapshot | None:
        return self._snapshot


_GAUGES: Final = (
    ("hj212_roster_mns", "MNs (monitoring points) in the roster, by city.", "mns"),
    ("hj212_roster_units", "Units (credit codes) in the roster, by city.", "units"),
    ("hj212_roster_mns_online", "Roster MNs online now, by city.", "mns_online"),
    (
        "hj212_roster_mns_silent",
        "Roster MNs seen before but silent for more than the silent threshold, by city.",
        "mns_silent",
    ),
    (
        "hj212_roster_mns_never_seen",
        "Roster MNs that never connected (should be networked, are not), by city.",
        "mns_never",
    ),
    (
        "hj212_roster_units_networked",
        "Roster units with every MN online, by city.",
        "units_full",
    ),
)


class CoverageCollector(Collector):
    """Exposes the cached coverage snapshot as per-city gauges at scrape time.

    ``snapshot`` returns the cached ``CoverageSnapshot``, or None before the first
    refresh has succeeded; then nothing is exported (no figure rather than a false 0)."""

    def __init__(
        self,
        snapshot: Callable[[], CoverageSnapshot | None],
        *,
        ref: Reference | None = None,
        clock: Callable[[], int] = now_us,
    ) -> None:
        self._snapshot = snapshot
        self._ref = ref or load_reference()
        self._clock = clock
        self._labels = (*self._ref.cities, UNKNOWN_CITY)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Registering must not read the snapshot (it may not exist yet).
        for name, doc, _ in _GAUGES:
            yield GaugeMetricFamily(name, doc, labels=["city"])
        yield GaugeMetricFamily(
            "hj212_unregistered_mns",
            "MNs sending data in the last 24 h that are not in the roster.",
        )
        yield GaugeMetricFamily(
            "hj212_coverage_snapshot_age_seconds", "Age of the coverage figures."
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self._snapshot()
        if snap is None:
            return
        by_city: dict[str, CoverageCounts] = {
            cc.counts.city or UNKNOWN_CITY: cc.counts for cc in snap.report.cities
        }
        for name, doc, field in _GAUGES:
            family = GaugeMetricFamily(name, doc, labels=["city"])
            for city in self._labels:
                counts = by_city.get(city)
                family.add_metric([city], 0 if counts is None else getattr(counts, field))
            yield family
        yield GaugeMetricFamily(
            "hj212_unregistered_mns",
            "MNs sending data in the last 24 h that are not in the roster.",
            value=snap.report.province.unknown_mns,
        )
        yield GaugeMetricFamily(
            "hj212_coverage_snapshot_age_seconds",
            "Age of the coverage figures.",
            value=max(0, self._clock() - snap.taken_at_us) / 1e6,
        )
