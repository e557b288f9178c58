"""Reference data of the networking roster: Jiangsu's cities, counties, parks and targets.

The files in ``storage/data`` come from the provincial plan (2021) and the administrative
divisions in force:

- ``jiangsu-divisions.csv``: the 13 prefecture-level cities and their county-level
  divisions, with former names that rosters still use (金坛市 -> 金坛区, 海门市 -> 海门区,
  港闸区 -> 崇川区 ...) as aliases, plus the two functional zones the plan's park list
  uses as a "county" (苏州 工业园区, 泰州 高新区).
- ``parks.csv``: the plan's attachment 2, 158 provincial-or-higher industrial parks.
- ``plan-2021-units-per-city.csv``: the plan's attachment 1, units per city that must
  monitor automatically (the target of the networking campaign).

A county name does not always identify its city: 鼓楼区 is a district of both 南京市 and
徐州市, and 高新区 is both an alias of 苏州's 虎丘区 and 泰州's functional zone. Resolution
therefore answers with a typed reason when the name is ambiguous, unknown, or belongs to
another city than the one given.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import unicodedata
from dataclasses import dataclass
from importlib import resources
from typing import Final

__all__ = [
    "UNKNOWN_CITY",
    "CityTarget",
    "County",
    "CountyError",
    "Park",
    "Reference",
    "Resolved",
    "load_reference",
    "normalise_text",
]

UNKNOWN_CITY: Final = "unknown"
"""The group (and metric label) of roster devices whose city is not one of the 13."""

_PROVINCE_TOTAL_ROW: Final = "全省合计"
_CITY_SUFFIX: Final = "市"


def normalise_text(text: str) -> str:
    """NFKC (full-width brackets and letters become ASCII) without any whitespace."""
    folded = unicodedata.normalize("NFKC", text)
    return "".join(folded.split())


@dataclass(frozen=True, slots=True)
class County:
    city: str
    name: str
    kind: str
    """``district``, ``county``, ``county-level city`` or ``functional zone``."""
    aliases: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Park:
    seq: int
    city: str
    county: str
    """Canonical county name (a former name in the plan's list is resolved)."""
    level: str
    """国家级 or 省级."""
    kind: str
    """经济类, 高新类, ..."""
    name: str


@dataclass(frozen=True, slots=True)
class CityTarget:
    city: str
    key_units: int
    simplified_units: int
    total_units: int


@dataclass(frozen=True, slots=True)
class Resolved:
    """A county resolved to its canonical name and city."""

    city: str
    county: str
    alias: str | None
    """The former name or alias the input used, or None when it was the current name."""


class CountyError(ValueError):
    """Why a county name cannot be resolved; ``code`` is one of a closed set."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Reference:
    """Cities, counties, parks and targets, with name resolution. Build with
    ``load_reference()`` (cached) or from CSV texts (tests)."""

    def __init__(self, divisions_csv: str, parks_csv: str, targets_csv: str) -> None:
        self.counties: tuple[County, ...] = tuple(_read_divisions(divisions_csv))
        cities: list[str] = []
        for c in self.counties:
            if c.city not in cities:
                cities.append(c.city)
        self.cities: tuple[str, ...] = tuple(cities)
        # name or alias -> every (city, canonical county) it may mean
        self._by_name: dict[str, list[tuple[County, str | None]]] = {}
        for c in self.counties:
            self._by_name.setdefault(normalise_text(c.name), []).append((c, None))
            for alias in c.aliases:
                self._by_name.setdefault(normalise_text(alias), []).append((c, alias))
        self._city_names = {normalise_text(name): name for name in self.cities}
        for name in self.cities:
            self._city_names.setdefault(normalise_text(name.removesuffix(_CITY_SUFFIX)), name)
        self.targets: dict[str, CityTarget] = {}
        self.province_target = 0
        for t in _read_targets(targets_csv):
            if t.city == _PROVINCE_TOTAL_ROW:
                self.province_target = t.total_units
            else:
                self.targets[t.city] = t
        if not self.province_target:
            self.province_target = sum(t.total_units for t in self.targets.values())
        self.parks: tuple[Park, ...] = tuple(self._read_parks(parks_csv))
        self._parks_by_name: dict[str, list[Park]] = {}
        for p in self.parks:
            self._parks_by_name.setdefault(normalise_text(p.name), []).append(p)

    # -- cities ------------------------------------------------------------------------

    def city(self, text: str) -> str | None:
        """The canonical city for ``南京市``, ``南京`` (any width/spacing), else None."""
        return self._city_names.get(normalise_text(text))

    def city_order(self, city: str) -> int:
        """Position in the plan's order (南京 first); unknown cities sort last."""
        try:
            return self.cities.index(city)
        except ValueError:
            return len(self.cities)

    def target(self, city: str) -> int | None:
        t = self.targets.get(city)
        return None if t is None else t.total_units

    # -- counties ----------------------------------------------------------------------

    def resolve_county(self, text: str, city: str | None = None) -> Resolved:
        """The canonical (city, county) of a roster's county cell.

        ``city`` (canonical) narrows the search; without it the name must be unique in
        the province. A cell that starts with a city name (``徐州市鼓楼区``) carries its
        own city. Raises ``CountyError`` with code ``unknown_county``,
        ``ambiguous_county`` or ``county_not_in_city``.
        """
        name = normalise_text(text)
        if not name:
            raise CountyError("missing_county", "county is empty")
        prefixed = None if name in self._by_name else self._split_city_prefix(name)
        if prefixed is not None:
            own_city, rest = prefixed
            if city is not None and own_city != city:
                raise CountyError(
                    "county_not_in_city", f"county {text!r} names {own_city}, not {city}"
                )
            city, name = own_city, rest
        candidates = self._by_name.get(name, [])
        if city is not None:
            in_city = [(c, a) for c, a in candidates if c.city == city]
            if not in_city:
                if candidates:
                    where = "、".join(sorted({c.city for c, _ in candidates}, key=self.city_order))
                    raise CountyError(
                        "county_not_in_city", f"county {text!r} is in {where}, not in {city}"
                    )
                raise CountyError("unknown_county", f"unknown county {text!r} in {city}")
            candidates = in_city
        if not candidates:
            raise CountyError("unknown_county", f"unknown county {text!r}")
        cities = {c.city for c, _ in candidates}
        if len(cities) > 1:
            where = "、".join(sorted(cities, key=self.city_order))
            raise CountyError(
                "ambiguous_county",
                f"county {text!r} exists in {where}: give the city (city column or --city)",
            )
        county, alias = candidates[0]
        return Resolved(county.city, county.name, alias)

    def counties_of(self, city: str) -> list[str]:
        return [c.name for c in self.counties if c.city == city]

    def _split_city_prefix(self, name: str) -> tuple[str, str] | None:
        for key, city in self._city_names.items():
            if name.startswith(key) and len(name) > len(key):
                rest = name[len(key) :]
                if rest in self._by_name:
                    return city, rest
        return None

    # -- parks -------------------------------------------------------------------------

    def park(self, text: str, city: str | None = None) -> Park | None:
        """The plan's park of that name (in ``city`` when given), or None."""
        found = self._parks_by_name.get(normalise_text(text), [])
        if city is not None:
            found = [p for p in found if p.city == city]
        return found[0] if len(found) == 1 else None

    def _read_parks(self, text: str) -> list[Park]:
        parks: list[Park] = []
        for row in csv.DictReader(io.StringIO(text)):
            county = row["county"]
            # keep the plan's text when it does not resolve: a park's county is informative
            with contextlib.suppress(CountyError):
                county = self.resolve_county(county, row["city"]).county
            parks.append(
                Park(int(row["seq"]), row["city"], county, row["level"], row["type"], row["name"])
            )
        return parks


def _read_divisions(text: str) -> list[County]:
    out: list[County] = []
    for row in csv.DictReader(io.StringIO(text)):
        aliases = tuple(a.strip() for a in (row.get("aliases") or "").split(";") if a.strip())
        out.append(County(row["city"].strip(), row["county"].strip(), row["kind"].strip(), aliases))
    return out


def _read_targets(text: str) -> list[CityTarget]:
    return [
        CityTarget(
            row["city"].strip(),
            int(row["permit_key_units"]),
            int(row["permit_simplified_units"]),
            int(row["total_units"]),
        )
        for row in csv.DictReader(io.StringIO(text))
    ]


def _data_text(name: str) -> str:
    return (
        resources.files("storage").joinpath("data").joinpath(name).read_text(encoding="utf-8-sig")
    )


@functools.cache
def load_reference() -> Reference:
    """The reference data shipped with the package (read once per process)."""
    return Reference(
        _data_text("jiangsu-divisions.csv"),
        _data_text("parks.csv"),
        _data_text("plan-2021-units-per-city.csv"),
    )
