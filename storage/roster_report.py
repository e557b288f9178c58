"""Coverage, progress and quality of the roster, computed from plain rows (no I/O here).

``storage.roster`` fetches the rows; these functions count. Times are integers,
microseconds since 1970-01-01 UTC, as everywhere in storage (storage/base.py).

Coverage at a time T (``--as-of``), per MN of the roster (enabled ``hj212.device`` rows):

- ever seen: the MN's first frame arrived at or before T (``hj212.presence.first_seen``);
- online: its last frame at or before T is within its online window
  (``storage.roster_model.online_window_s``: 3 x the expected interval by default);
- seen in 24 h: its last frame at or before T is within the 24 hours before T;
- never connected: not ever seen (the roster says it must be networked; it is not);
- silent: ever seen, but nothing in the last ``silent_hours`` hours before T.

Units (credit codes) in a group (the province, a city, a county, a park) are the units
with at least one MN in that group; a unit is fully networked when all its MNs in the
group are online, partly when some but not all are, never connected when none of them
was ever seen. A unit with MNs in two counties counts in both, so county unit counts may
add up to more than the city's.

MNs that send data but are not in the roster (no ``hj212.device`` row) are "unknown":
counted when seen in the 24 hours before T and listed with their last peer address.
Disabled devices are neither roster nor unknown.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final
from zoneinfo import ZoneInfo

from storage.roster_model import (
    HOUR_S,
    RosterDevice,
    effective_rtd_interval_s,
    online_window_s,
)
from storage.roster_ref import UNKNOWN_CITY, Reference

__all__ = [
    "DEFAULT_SILENT_HOURS",
    "PROVINCE",
    "SEEN_WINDOW_S",
    "US",
    "CityCoverage",
    "CoverageCounts",
    "CoverageReport",
    "DeviceState",
    "MnCounts",
    "ProgressReport",
    "ProgressRow",
    "QualityReport",
    "QualityRow",
    "Sighting",
    "SnapshotRow",
    "UnknownMn",
    "compute_coverage",
    "compute_progress",
    "compute_quality",
    "day_bounds_us",
    "lookback_us",
]

US: Final = 1_000_000
SEEN_WINDOW_S: Final = 24 * HOUR_S
"""'Seen in the last 24 h' and the window for unknown MNs."""
DEFAULT_SILENT_HOURS: Final = 2
"""'Silent' = nothing for more than this many hours (operators chase these): long enough
that a modem reconnect or a slow hourly-only device does not count, short enough to
catch an outage the same morning."""
PROVINCE: Final = ""
"""The ``city`` value of province-wide rows (snapshots, progress)."""


@dataclass(frozen=True, slots=True)
class Sighting:
    """What is known of one MN's frames at the evaluation time T."""

    mn: str
    first_seen_us: int
    last_seen_us: int | None
    """Last frame at or before T; None when it is older than the lookback (only known to
    be before T - lookback, ``lookback_us``)."""
    peer: str | None = None
    frames: int = 0


def lookback_us(silent_hours: int) -> int:
    """How far before T a last frame must be known exactly to classify every MN."""
    return max(SEEN_WINDOW_S, silent_hours * HOUR_S) * US


# -- coverage -------------------------------------------------------------------------


@dataclass(slots=True)
class CoverageCounts:
    level: str
    """``province``, ``city``, ``county`` or ``park``."""
    city: str | None = None
    county: str | None = None
    park: str | None = None
    target: int | None = None
    """The plan's unit count (cities and the province only)."""
    units: int = 0
    units_full: int = 0
    units_partial: int = 0
    units_never: int = 0
    mns: int = 0
    mns_ever_seen: int = 0
    mns_online: int = 0
    mns_seen_24h: int = 0
    mns_never: int = 0
    mns_silent: int = 0
    unknown_mns: int = 0
    """Province and the ``unknown`` city only: MNs sending data that are not in the roster."""

    @property
    def mns_offline(self) -> int:
        return self.mns - self.mns_online

    @property
    def online_rate(self) -> float | None:
        return self.mns_online / self.mns if self.mns else None

    @property
    def units_vs_target(self) -> float | None:
        return self.units_full / self.target if self.target else None


@dataclass(frozen=True, slots=True)
class DeviceState:
    """One roster MN at T."""

    device: RosterDevice
    first_seen_us: int | None
    last_seen_us: int | None
    online: bool
    seen_24h: bool
    silent: bool

    @property
    def ever_seen(self) -> bool:
        return self.first_seen_us is not None

    @property
    def status(self) -> str:
        if self.online:
            return "online"
        return "offline" if self.ever_seen else "never"


@dataclass(frozen=True, slots=True)
class UnknownMn:
    mn: str
    first_seen_us: int
    last_seen_us: int
    peer: str | None
    frames: int


@dataclass(slots=True)
class CityCoverage:
    counts: CoverageCounts
    counties: list[CoverageCounts] = field(default_factory=list)
    parks: list[CoverageCounts] = field(default_factory=list)


@dataclass(slots=True)
class CoverageReport:
    as_of_us: int
    silent_hours: int
    province: CoverageCounts
    cities: list[CityCoverage]
    never_connected: list[DeviceState]
    silent: list[DeviceState]
    unknown: list[UnknownMn]
    city_filter: str | None = None


def _state(device: RosterDevice, s: Sighting | None, as_of_us: int, silent_us: int) -> DeviceState:
    if s is None or s.first_seen_us > as_of_us:
        return DeviceState(device, None, None, online=False, seen_24h=False, silent=False)
    last = s.last_seen_us
    age = None if last is None else as_of_us - last
    online = age is not None and age <= online_window_s(device) * US
    seen_24h = age is not None and age <= SEEN_WINDOW_S * US
    silent = age is None or age > silent_us
    return DeviceState(device, s.first_seen_us, last, online, seen_24h, silent)


def _count(counts: CoverageCounts, states: Sequence[DeviceState]) -> None:
    by_unit: dict[str, list[DeviceState]] = defaultdict(list)
    for st in states:
        by_unit[st.device.unit_key].append(st)
        counts.mns += 1
        counts.mns_ever_seen += st.ever_seen
        counts.mns_online += st.online
        counts.mns_seen_24h += st.seen_24h
        counts.mns_never += not st.ever_seen
        counts.mns_silent += st.silent
    counts.units = len(by_unit)
    for members in by_unit.values():
        online = sum(m.online for m in members)
        if online == len(members):
            counts.units_full += 1
        elif online:
            counts.units_partial += 1
        if not any(m.ever_seen for m in members):
            counts.units_never += 1


def device_city(device: RosterDevice, ref: Reference) -> str:
    """The device's city if it is one of the 13, else ``unknown``."""
    return device.city if device.city in ref.targets else UNKNOWN_CITY


def compute_coverage(
    roster: Iterable[RosterDevice],
    sightings: Iterable[Sighting],
    ref: Reference,
    *,
    as_of_us: int,
    silent_hours: int = DEFAULT_SILENT_HOURS,
    city: str | None = None,
) -> CoverageReport:
    """Coverage at ``as_of_us``; ``city`` limits the report to one city (no unknown MNs).

    ``roster`` is every registered device, disabled ones included: they are not counted,
    and MNs sending under them are not 'unknown' either."""
    seen = {s.mn: s for s in sightings}
    silent_us = silent_hours * HOUR_S * US
    states: list[DeviceState] = []
    roster_mns: set[str] = set()
    for device in roster:
        roster_mns.add(device.mn)
        if not device.enabled or (city is not None and device_city(device, ref) != city):
            continue
        states.append(_state(device, seen.get(device.mn), as_of_us, silent_us))

    by_city: dict[str, list[DeviceState]] = defaultdict(list)
    for st in states:
        by_city[device_city(st.device, ref)].append(st)
    cities = [c for c in ref.cities if city is None or c == city]
    if UNKNOWN_CITY in by_city and city in (None, UNKNOWN_CITY):
        cities.append(UNKNOWN_CITY)

    unknown: list[UnknownMn] = []
    if city is None:
        window = SEEN_WINDOW_S * US
        for s in seen.values():
            if s.mn in roster_mns or s.first_seen_us > as_of_us or s.last_seen_us is None:
                continue
            if as_of_us - s.last_seen_us <= window:
                unknown.append(UnknownMn(s.mn, s.first_seen_us, s.last_seen_us, s.peer, s.frames))
        unknown.sort(key=lambda u: u.mn)

    province = CoverageCounts("province", target=ref.province_target if city is None else None)
    _count(province, states)
    province.unknown_mns = len(unknown)
    return CoverageReport(
        as_of_us=as_of_us,
        silent_hours=silent_hours,
        province=province,
        cities=[_city_coverage(c, by_city.get(c, []), ref) for c in cities],
        never_connected=sorted((s for s in states if not s.ever_seen), key=_state_order(ref)),
        silent=sorted((s for s in states if s.ever_seen and s.silent), key=_state_order(ref)),
        unknown=unknown,
        city_filter=city,
    )


def _state_order(ref: Reference) -> _StateKey:
    return _StateKey(ref)


class _StateKey:
    """Sort key: city in the plan's order, county, unit, MN."""

    def __init__(self, ref: Reference) -> None:
        self._ref = ref

    def __call__(self, s: DeviceState) -> tuple[int, str, str, str]:
        d = s.device
        return (
            self._ref.city_order(device_city(d, self._ref)),
            d.county or "",
            d.unit_name or "",
            d.mn,
        )


def _city_coverage(city: str, states: list[DeviceState], ref: Reference) -> CityCoverage:
    counts = CoverageCounts("city", city=city, target=ref.target(city))
    _count(counts, states)
    by_county: dict[str, list[DeviceState]] = defaultdict(list)
    by_park: dict[str, list[DeviceState]] = defaultdict(list)
    for st in states:
        by_county[st.device.county or ""].append(st)
        if st.device.park:
            by_park[st.device.park].append(st)
    order = {name: i for i, name in enumerate(ref.counties_of(city))}
    cc = CityCoverage(counts)
    for county in sorted(by_county, key=lambda c: (order.get(c, len(order)), c)):
        row = CoverageCounts("county", city=city, county=county or None)
        _count(row, by_county[county])
        cc.counties.append(row)
    for park in sorted(by_park):
        row = CoverageCounts("park", city=city, park=park)
        _count(row, by_park[park])
        cc.parks.append(row)
    return cc


# -- progress -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    """One row of ``hj212.coverage_daily``: a city's (or the province's) day-end counts."""

    day: dt.date
    city: str
    """One of the 13, ``unknown``, or ``PROVINCE`` ('') for the whole province."""
    as_of_us: int
    target: int | None
    units: int
    units_full: int
    units_partial: int
    units_never: int
    mns: int
    mns_ever_seen: int
    mns_online: int
    mns_seen_24h: int
    mns_never: int
    mns_silent: int
    silent_hours: int
    unknown_mns: int

    @classmethod
    def from_counts(
        cls, day: dt.date, city: str, as_of_us: int, silent_hours: int, c: CoverageCounts
    ) -> SnapshotRow:
        return cls(
            day,
            city,
            as_of_us,
            c.target,
            c.units,
            c.units_full,
            c.units_partial,
            c.units_never,
            c.mns,
            c.mns_ever_seen,
            c.mns_online,
            c.mns_seen_24h,
            c.mns_never,
            c.mns_silent,
            silent_hours,
            c.unknown_mns,
        )


def snapshot_rows(day: dt.date, report: CoverageReport) -> list[SnapshotRow]:
    """The province row and one row per city of a province-wide coverage report."""
    at, hours = report.as_of_us, report.silent_hours
    rows = [SnapshotRow.from_counts(day, PROVINCE, at, hours, report.province)]
    for cc in report.cities:
        c = cc.counts
        rows.append(SnapshotRow.from_counts(day, c.city or UNKNOWN_CITY, at, hours, c))
    return rows


@dataclass(frozen=True, slots=True)
class ProgressRow:
    city: str
    week: str
    """ISO week, ``2024-W11``."""
    week_start: dt.date
    week_end: dt.date
    snapshot_day: dt.date | None
    """The day whose snapshot stands for the week's end (None: no snapshot that week)."""
    target: int | None
    units: int | None
    mns: int | None
    units_full: int | None
    units_partial: int | None
    mns_online: int | None
    mns_seen_24h: int | None
    mns_never: int | None
    change_units_full: int | None
    change_units_partial: int | None
    change_mns_online: int | None
    """Differences from the week before (None when either week has no snapshot)."""


@dataclass(slots=True)
class ProgressReport:
    today: dt.date
    weeks: int
    rows: list[ProgressRow]
    """Per city in the plan's order (then ``unknown``, then the province ''), oldest week first."""


def _week_start(day: dt.date) -> dt.date:
    return day - dt.timedelta(days=day.weekday())


def _change(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a - b


def compute_progress(
    snapshots: Iterable[SnapshotRow], ref: Reference, *, today: dt.date, weeks: int
) -> ProgressReport:
    """Per city, the counts at the end of each of the last ``weeks`` ISO weeks (Monday to
    Sunday; the current week ends ``today``) and the change since the week before. A
    week's end is its latest snapshot on or before its Sunday."""
    by_city_day: dict[str, dict[dt.date, SnapshotRow]] = defaultdict(dict)
    for s in snapshots:
        by_city_day[s.city][s.day] = s
    current = _week_start(today)
    starts = [current - dt.timedelta(weeks=w) for w in range(weeks, -1, -1)]
    cities = [*ref.cities]
    if UNKNOWN_CITY in by_city_day:
        cities.append(UNKNOWN_CITY)
    cities.append(PROVINCE)
    rows: list[ProgressRow] = []
    for city in cities:
        days = by_city_day.get(city, {})
        previous: SnapshotRow | None = None
        for i, start in enumerate(starts):
            end = min(start + dt.timedelta(days=6), today)
            in_week = [d for d in days if start <= d <= end]
            snap = days[max(in_week)] if in_week else None
            if i > 0:
                rows.append(
                    _progress_row(city, start=start, end=end, snap=snap, prev=previous, ref=ref)
                )
            previous = snap
    return ProgressReport(today=today, weeks=weeks, rows=rows)


def _progress_row(
    city: str,
    *,
    start: dt.date,
    end: dt.date,
    snap: SnapshotRow | None,
    prev: SnapshotRow | None,
    ref: Reference,
) -> ProgressRow:
    iso = start.isocalendar()
    target = ref.province_target if city == PROVINCE else ref.target(city)
    if snap is None:
        return ProgressRow(
            city, f"{iso.year}-W{iso.week:02d}", start, end, None, target, *([None] * 10)
        )
    return ProgressRow(
        city=city,
        week=f"{iso.year}-W{iso.week:02d}",
        week_start=start,
        week_end=end,
        snapshot_day=snap.day,
        target=target,
        units=snap.units,
        mns=snap.mns,
        units_full=snap.units_full,
        units_partial=snap.units_partial,
        mns_online=snap.mns_online,
        mns_seen_24h=snap.mns_seen_24h,
        mns_never=snap.mns_never,
        change_units_full=_change(snap.units_full, prev.units_full if prev else None),
        change_units_partial=_change(snap.units_partial, prev.units_partial if prev else None),
        change_mns_online=_change(snap.mns_online, prev.mns_online if prev else None),
    )


def day_bounds_us(day: dt.date, tz: str) -> tuple[int, int]:
    """[start, end) of a local calendar day in microseconds since 1970 UTC."""
    zone = ZoneInfo(tz)
    start = dt.datetime.combine(day, dt.time(), zone)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), zone)
    return _us(start), _us(end)


def _us(t: dt.datetime) -> int:
    delta = t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * US + delta.microseconds


# -- quality --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MnCounts:
    """What ``hj212.reading`` holds for one MN in the window."""

    mn: str
    hours: int
    """Distinct hours with hourly (2061) data."""
    realtime: int
    """Distinct data times of real-time (2011) data."""
    values: int
    """Value rows of every CN."""
    flagged: int
    """Value rows whose Flag is present and not N."""


@dataclass(slots=True)
class QualityRow:
    level: str
    """``province``, ``city``, ``county`` or ``mn``."""
    city: str | None = None
    county: str | None = None
    mn: str | None = None
    unit_name: str | None = None
    outlet_type: str | None = None
    rtd_interval_s: int | None = None
    mns: int = 0
    hours_expected: int = 0
    hours_received: int = 0
    realtime_expected: int = 0
    realtime_received: int = 0
    values: int = 0
    values_flagged: int = 0

    @property
    def transmission_rate(self) -> float | None:
        return self.hours_received / self.hours_expected if self.hours_expected else None

    @property
    def realtime_completeness(self) -> float | None:
        if not self.realtime_expected:
            return None
        return self.realtime_received / self.realtime_expected

    @property
    def flagged_share(self) -> float | None:
        return self.values_flagged / self.values if self.values else None

    def add(self, other: QualityRow) -> None:
        self.mns += other.mns
        self.hours_expected += other.hours_expected
        self.hours_received += other.hours_received
        self.realtime_expected += other.realtime_expected
        self.realtime_received += other.realtime_received
        self.values += other.values
        self.values_flagged += other.values_flagged


QUALITY_DEFINITIONS: Final = (
    (
        "transmission_rate",
        "transmission rate = distinct hours with hourly (CN 2061) data received / hours "
        "in the window (up to the as-of time)",
    ),
    (
        "realtime_completeness",
        "real-time completeness = distinct real-time (CN 2011) data times received / "
        "(window seconds / the MN's expected real-time interval)",
    ),
    (
        "flagged_share",
        "flagged share = values whose Flag is present and not N / all values received "
        "(every CN) in the window",
    ),
    (
        "rollup",
        "county, city and province rows = sum of the MNs' received counts (each capped "
        "at its expected count) / sum of their expected counts; MNs not in the roster are "
        "not included",
    ),
)


@dataclass(slots=True)
class QualityReport:
    start_us: int
    end_us: int
    """Window end used: the requested end, or the as-of time when earlier."""
    province: QualityRow
    cities: list[QualityRow]
    counties: list[QualityRow]
    mns: list[QualityRow]
    definitions: tuple[tuple[str, str], ...] = QUALITY_DEFINITIONS
    city_filter: str | None = None


def compute_quality(
    roster: Iterable[RosterDevice],
    counts: Iterable[MnCounts],
    ref: Reference,
    *,
    start_us: int,
    end_us: int,
    city: str | None = None,
) -> QualityReport:
    """Per MN and rolled up per county, city and the province, over [start_us, end_us)."""
    by_mn = {c.mn: c for c in counts}
    span_s = max(0, end_us - start_us) // US
    hours = span_s // HOUR_S
    mn_rows: list[QualityRow] = []
    for d in roster:
        c_city = device_city(d, ref)
        if not d.enabled or (city is not None and c_city != city):
            continue
        got = by_mn.get(d.mn, MnCounts(d.mn, 0, 0, 0, 0))
        rtd = effective_rtd_interval_s(d)
        hours_expected = hours if d.hourly else 0
        rt_expected = span_s // rtd if rtd > 0 else 0
        mn_rows.append(
            QualityRow(
                "mn",
                city=c_city,
                county=d.county,
                mn=d.mn,
                unit_name=d.unit_name,
                outlet_type=d.outlet_type,
                rtd_interval_s=rtd,
                mns=1,
                hours_expected=hours_expected,
                hours_received=min(got.hours, hours_expected),
                realtime_expected=rt_expected,
                realtime_received=min(got.realtime, rt_expected),
                values=got.values,
                values_flagged=got.flagged,
            )
        )
    mn_rows.sort(key=lambda r: (ref.city_order(r.city or ""), r.county or "", r.mn or ""))
    province = QualityRow("province")
    cities: dict[str, QualityRow] = {}
    counties: dict[tuple[str, str], QualityRow] = {}
    for r in mn_rows:
        c = r.city or UNKNOWN_CITY
        province.add(r)
        cities.setdefault(c, QualityRow("city", city=c)).add(r)
        counties.setdefault((c, r.county or ""), QualityRow("county", city=c, county=r.county)).add(
            r
        )
    return QualityReport(
        start_us=start_us,
        end_us=end_us,
        province=province,
        cities=sorted(cities.values(), key=lambda r: ref.city_order(r.city or "")),
        counties=sorted(
            counties.values(), key=lambda r: (ref.city_order(r.city or ""), r.county or "")
        ),
        mns=mn_rows,
        city_filter=city,
    )
