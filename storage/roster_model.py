"""Roster vocabulary shared by the import, the reports and the metrics.

A roster row is one monitoring point (an MN, one data acquisition unit's outlet) of a
discharge unit, and a unit is identified by its unified social credit code: a unit may
have several MNs (a wastewater outlet and two stacks, say).

Online is derived, never stored (design.md section 4): an MN is online at time T when
its last frame arrived no longer than its online window before T. The window is the
roster's ``online_after_s`` when set, else ``ONLINE_FACTOR`` times the interval the
device is expected to send at (its real-time interval, else minute, else hourly data),
and never less than ``ONLINE_MIN_WINDOW_S``.

Default real-time (2011) intervals per outlet type, used when the roster gives none:

    gas (废气)          30 s   CEMS real-time data; HJ 212's customary RtdInterval
    water (废水)        60 s   flow / pH real-time values of water DAUs
    process (工况)      60 s   operating-condition monitoring
    electricity (用电)  300 s  power monitoring of treatment facilities
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_RTD_INTERVAL_S",
    "HOUR_S",
    "ONLINE_FACTOR",
    "ONLINE_MIN_WINDOW_S",
    "OUTLET_LABELS",
    "OUTLET_TYPES",
    "RosterDevice",
    "RosterEntry",
    "effective_rtd_interval_s",
    "online_window_s",
    "outlet_type",
]

OUTLET_TYPES: Final = ("water", "gas", "process", "electricity")
OUTLET_LABELS: Final = {"water": "废水", "gas": "废气", "process": "工况", "electricity": "用电"}

DEFAULT_RTD_INTERVAL_S: Final = {"water": 60, "gas": 30, "process": 60, "electricity": 300}
FALLBACK_RTD_INTERVAL_S: Final = 60
"""For devices whose outlet type is not one of the four (registered by other means)."""
HOUR_S: Final = 3_600

ONLINE_FACTOR: Final = 3
"""Missing two expected frames in a row is normal (a retry, a slow modem); three is not."""
ONLINE_MIN_WINDOW_S: Final = 60
"""Presence is written at most every few seconds per device (storage.presence_interval_s,
5 s) and relays add jitter: a window below a minute would flap."""

# Cell text (NFKC, no spaces, lower case) -> outlet type.
_OUTLET_WORDS: Final = {
    "water": ("废水", "水", "污水", "废水排放口", "废水排口", "water", "wastewater"),
    "gas": ("废气", "气", "烟气", "废气排放口", "废气排口", "gas", "air", "fluegas"),
    "process": ("工况", "工况监控", "工况监测", "process", "operating", "condition"),
    "electricity": (
        "用电",
        "用电监控",
        "用电监测",
        "分表计电",
        "电",
        "electricity",
        "electric",
        "power",
    ),
}
_OUTLET_BY_WORD: Final = {w: kind for kind, words in _OUTLET_WORDS.items() for w in words}


def outlet_type(text: str) -> str | None:
    """``water``/``gas``/``process``/``electricity`` for a cell such as 废水 or Flue gas."""
    key = "".join(text.split()).lower().replace("_", "").replace("-", "")
    return _OUTLET_BY_WORD.get(key)


@dataclass(frozen=True, slots=True)
class RosterEntry:
    """One valid roster row, normalised, ready to be stored in ``hj212.device``."""

    line: int
    mn: str
    unit_name: str
    city: str
    county: str
    credit_code: str
    outlet_type: str
    permit_no: str | None = None
    park: str | None = None
    industry: str | None = None
    networked_city: bool | None = None
    networked_province: bool | None = None
    monitored_content: str | None = None
    remark: str | None = None
    rtd_interval_s: int | None = None
    minute_interval_s: int | None = None
    online_after_s: int | None = None


@dataclass(frozen=True, slots=True)
class RosterDevice:
    """What the reports need of one enabled ``hj212.device`` row."""

    mn: str
    unit_name: str | None
    credit_code: str | None
    city: str | None
    county: str | None
    park: str | None
    outlet_type: str | None
    rtd_interval_s: int | None = None
    minute_interval_s: int | None = None
    hourly: bool = True
    online_after_s: int | None = None
    enabled: bool = True
    """Disabled devices are left out of every count (and are not 'unknown' either)."""

    @property
    def unit_key(self) -> str:
        """Units are identified by credit code; a row without one is a unit of its own."""
        return self.credit_code or f"mn:{self.mn}"


def effective_rtd_interval_s(device: RosterDevice) -> int:
    """The real-time interval to expect: the roster's, else the outlet type's default.

    0 means the device sends no real-time data."""
    if device.rtd_interval_s is not None:
        return device.rtd_interval_s
    kind = outlet_type(device.outlet_type or "")
    return DEFAULT_RTD_INTERVAL_S.get(kind or "", FALLBACK_RTD_INTERVAL_S)


def online_window_s(device: RosterDevice) -> int:
    """Seconds since the last frame during which the device still counts as online."""
    if device.online_after_s:
        return device.online_after_s
    interval = effective_rtd_interval_s(device)
    if interval <= 0:
        interval = device.minute_interval_s or HOUR_S
    return max(ONLINE_FACTOR * interval, ONLINE_MIN_WINDOW_S)
