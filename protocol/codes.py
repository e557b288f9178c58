"""Code tables (ST, CN, factor, information and data-flag codes) grouped in profiles.

The tables are data, not code: CSV files in ``protocol/data/`` named ``<table>.<layer>.csv``
and read through ``importlib.resources``. A profile is an ordered list of layers
(``protocol/data/profiles.csv``); a later layer adds rows to, or replaces rows of, an
earlier one (keyed by the first column). Correcting a table, or filling the Jiangsu slot
once its text is available, is a data change.

Profiles (design.md section 3, protocol.md sections 9-12):

==============  ===================================  ============================================
name            layers                               what it is
==============  ===================================  ============================================
2005            common, 2005                         HJ/T 212-2005 (tables from implementations)
2017            common, 2017                         HJ 212-2017
2025            common, 2017, 2025                   provisional: 2017 plus protocol.md section 12
js-db32-4349    common, 2017, js-db32-4349           Jiangsu slot: its files are empty for now
hebei           common, 2017, hebei                  2017 plus the Hebei info codes of 9.3
==============  ===================================  ============================================

Tables: ``st`` (code, names), ``cn`` (names, kind, sender, device_role, reply), ``factors``
(2017 code, 2005 code, family, names, units, type; the common layer holds HJ 212-2017
tables B.1, B.2, B.3 and the process codes of B.5/B.7 as ``e101xx`` patterns), ``info``
(B.10, Hebei, 2025), ``flags`` (2017 and 2005 data flags) and ``commands`` (the parameters
each platform-to-device command takes, used by ``protocol.encode.command``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Final

from protocol.errors import ProtocolError, RejectReason

__all__ = [
    "CnInfo",
    "CommandParam",
    "FactorInfo",
    "InfoCodeInfo",
    "Profile",
    "StInfo",
    "get_profile",
    "known_cns",
    "known_sts",
    "profile_for_version",
    "profile_names",
]

_DATA_PACKAGE: Final = "protocol"
_DATA_DIR: Final = "data"

# ST families used to pick the 2005 factor table: 2005 numeric codes collide between
# water and gas ("01" gas dust vs "001" water pH, protocol.md 10.5), so the system code
# decides which table an old code is read from.
_WATER_STS: Final = frozenset({"21", "24", "26", "32", "33", "34", "52"})
_GAS_STS: Final = frozenset({"22", "27", "31", "39", "51"})
# Letters that start a 2017-style 6-character code (HJ 212-2017 section 6.4).
_CODE_2017_PREFIXES: Final = frozenset("waegi")


@dataclass(frozen=True, slots=True)
class StInfo:
    """One system code (ST)."""

    code: str
    name_zh: str
    name_en: str


@dataclass(frozen=True, slots=True)
class CnInfo:
    """One command code (CN) of a profile.

    ``sender`` is who may send it: ``platform``, ``device`` or ``both``. ``device_role`` is
    what a frame with this CN is when a device sends it: ``upload`` (device data),
    ``notify`` (a notification expecting 9013), ``answer`` (a reply to a platform request)
    or ``none`` (only the platform may send it). ``reply`` is what the platform owes such a
    device frame when its Flag asks for one: ``9014``, ``9013`` or None.
    """

    cn: str
    name_zh: str
    name_en: str
    kind: str
    sender: str
    device_role: str
    reply: str | None
    notes: str


@dataclass(frozen=True, slots=True)
class FactorInfo:
    """One factor (pollutant / parameter / process) code."""

    code: str
    """The HJ 212-2017 code (``w01018``), or a pattern such as ``e201xx`` for process codes."""
    code_2005: str | None
    family: str
    """water, gas, noise, process_water or process_gas."""
    name_zh: str
    name_en: str
    unit: str
    cou_unit: str
    type: str


@dataclass(frozen=True, slots=True)
class InfoCodeInfo:
    """One field-device information code (``iXXXXX``)."""

    code: str
    name_zh: str
    name_en: str
    unit: str
    type: str
    values: str


@dataclass(frozen=True, slots=True)
class CommandParam:
    """One parameter a platform-to-device command takes (``commands.<layer>.csv``).

    ``param`` is a CP key, or ``*-Suffix`` for a family of keys (``*-Info``). ``kind``:
    time14, hhmmss, int (``arg`` = ``min-max``), choice (``arg`` = ``a|b|c``), code, info,
    info_item, number, text (``arg`` = ``min-max`` length).
    """

    cn: str
    param: str
    required: bool
    kind: str
    arg: str


class Profile:
    """The code tables of one profile. Look-ups never raise; unknown codes give None."""

    __slots__ = (
        "_cns",
        "_commands",
        "_factors",
        "_flags",
        "_infos",
        "_infos_lower",
        "_old_any",
        "_old_gas",
        "_old_water",
        "_sts",
        "description",
        "layers",
        "name",
    )

    def __init__(self, name: str, layers: tuple[str, ...], description: str) -> None:
        self.name = name
        self.layers = layers
        self.description = description
        self._sts: dict[str, StInfo] = {}
        self._cns: dict[str, CnInfo] = {}
        self._factors: dict[str, FactorInfo] = {}
        self._infos: dict[str, InfoCodeInfo] = {}
        self._flags: dict[str, str] = {}
        self._commands: dict[str, list[CommandParam]] = {}
        for layer in layers:
            for row in _rows("st", layer):
                self._sts[row["code"]] = StInfo(row["code"], row["name_zh"], row["name_en"])
            for row in _rows("cn", layer):
                self._cns[row["cn"]] = CnInfo(
                    row["cn"],
                    row["name_zh"],
                    row["name_en"],
                    row["kind"],
                    row["sender"],
                    row["device_role"],
                    None if row["reply"] in ("", "none") else row["reply"],
                    row["notes"],
                )
            for row in _rows("factors", layer):
                self._factors[row["code"]] = FactorInfo(
                    row["code"],
                    row["code_2005"] or None,
                    row["family"],
                    row["name_zh"],
                    row["name_en"],
                    row["unit"],
                    row["cou_unit"],
                    row["type"],
                )
            for row in _rows("info", layer):
                self._infos[row["code"]] = InfoCodeInfo(
                    row["code"],
                    row["name_zh"],
                    row["name_en"],
                    row["unit"],
                    row["type"],
                    row["values"],
                )
            for row in _rows("flags", layer):
                self._flags[row["flag"]] = row["meaning"]
            layer_commands: dict[str, list[CommandParam]] = {}
            for row in _rows("commands", layer):
                params = layer_commands.setdefault(row["cn"], [])
                if row["param"]:
                    params.append(
                        CommandParam(
                            row["cn"],
                            row["param"],
                            row["required"] == "yes",
                            row["kind"],
                            row["arg"],
                        )
                    )
            # A layer that lists a command replaces that command's parameter list.
            self._commands.update(layer_commands)
        self._infos_lower = {code.lower(): info for code, info in self._infos.items()}
        self._old_water: dict[str, str] = {}
        self._old_gas: dict[str, str] = {}
        old_count: dict[str, int] = {}
        self._old_any: dict[str, str] = {}
        for factor in self._factors.values():
            old = factor.code_2005
            if old is None:
                continue
            if factor.family == "water":
                self._old_water[old] = factor.code
            elif factor.family == "gas":
                self._old_gas[old] = factor.code
            old_count[old] = old_count.get(old, 0) + 1
            self._old_any[old] = factor.code
        for old, count in old_count.items():
            if count > 1:  # the same text in both families: ST must decide
                del self._old_any[old]

    def __repr__(self) -> str:
        return f"Profile({self.name!r}, layers={self.layers!r})"

    def st_info(self, st: str) -> StInfo | None:
        return self._sts.get(st)

    def cn_info(self, cn: str) -> CnInfo | None:
        return self._cns.get(cn)

    def factor(self, code: str) -> FactorInfo | None:
        """The factor of a 2017 code (process codes match their ``e201xx`` pattern)."""
        info = self._factors.get(code)
        if info is None and len(code) == 6 and code[0] in "eg":
            info = self._factors.get(code[:4] + "xx")
        return info

    def normalise_code(self, code: str, st: str | None) -> str | None:
        """The HJ 212-2017 code for ``code``: 2017-shaped codes map to themselves, 2005
        codes through the table (ST picks water or gas), anything else None."""
        if code in self._factors:
            return code
        if len(code) == 6 and code[0] in _CODE_2017_PREFIXES and code.isascii():
            return code if code[1:].isalnum() else None
        if st in _WATER_STS:
            return self._old_water.get(code)
        if st in _GAS_STS:
            return self._old_gas.get(code)
        return self._old_any.get(code)

    def info(self, code: str) -> InfoCodeInfo | None:
        """An information code; ``i3331x``-style patterns and other letter case match too."""
        info = self._infos.get(code)
        if info is None and len(code) == 6:
            info = self._infos.get(code[:5] + "x") or self._infos_lower.get(code.lower())
        return info

    def flag_meaning(self, flag: str) -> str | None:
        return self._flags.get(flag)

    def command_params(self, cn: str) -> tuple[CommandParam, ...] | None:
        """The parameters of a platform-to-device command, or None if it is not one."""
        params = self._commands.get(cn)
        return None if params is None else tuple(params)

    @property
    def cns(self) -> Mapping[str, CnInfo]:
        return self._cns

    @property
    def sts(self) -> Mapping[str, StInfo]:
        return self._sts


def _read(name: str) -> str | None:
    path = resources.files(_DATA_PACKAGE).joinpath(_DATA_DIR, name)
    if not path.is_file():
        return None
    return path.read_text(encoding="utf-8")


def _rows(table: str, layer: str) -> list[dict[str, str]]:
    text = _read(f"{table}.{layer}.csv")
    if text is None:
        return []
    return [
        {k: (v or "").strip() for k, v in row.items() if k is not None}
        for row in csv.DictReader(io.StringIO(text))
    ]


def _profile_specs() -> dict[str, tuple[tuple[str, ...], str]]:
    text = _read("profiles.csv") or ""
    return {
        row["profile"]: (tuple(row["layers"].split()), row["description"])
        for row in csv.DictReader(io.StringIO(text))
    }


_SPECS: Final = _profile_specs()
_PROFILES: dict[str, Profile] = {}
# Version text of a packet (Packet.version) -> profile used when the registry names none.
_BY_VERSION: Final = {"2005": "2005", "2017": "2017", "2025": "2025"}
# Unknown version bits ("v3"...): the newest profile is the best guess (field-quirks Q11).
_NEWEST: Final = "2025"


def profile_names() -> tuple[str, ...]:
    return tuple(_SPECS)


def get_profile(name: str) -> Profile:
    """The profile called ``name`` (loaded once). Unknown names raise ``ProtocolError``."""
    profile = _PROFILES.get(name)
    if profile is None:
        spec = _SPECS.get(name)
        if spec is None:
            raise ProtocolError(RejectReason.BAD_SEGMENT, f"unknown protocol profile {name!r}")
        profile = Profile(name, *spec)
        _PROFILES[name] = profile
    return profile


def profile_for_version(version: str) -> Profile:
    """The default profile of a packet version ("2005", "2017", "2025", "v<N>")."""
    return get_profile(_BY_VERSION.get(version, _NEWEST))


def known_cns() -> frozenset[str]:
    """Every CN of every profile: the bounded set of ``cn`` metric label values."""
    return frozenset(cn for name in _SPECS for cn in get_profile(name).cns)


def known_sts() -> frozenset[str]:
    """Every ST of every profile: the bounded set of ``st`` metric label values."""
    return frozenset(st for name in _SPECS for st in get_profile(name).sts)
