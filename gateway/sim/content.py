"""What a simulated unit says: factors per profile, deterministic values, frames.

Values are a pure function of (seed, device, CN, DataTime): a resend, a backfill of a
slot already sent, or another process rebuilding the same slot produce the same text, so
the rows a run stores are exactly the distinct (MN, CN, DataTime, code) keys it sent.

Frames go through the protocol encoder (``protocol.build_segment`` and
``protocol.encode_frame``); quirky devices then alter the bytes the way field devices
do (lower-case CRC, LF tail) or the text before encoding (spaces, empty items, 17-digit
DataTime, no QN / Flag).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from gateway.sim.fleet import DeviceSpec
from protocol import build_segment, encode_frame

CN_REALTIME: Final = 2011
CN_MINUTE: Final = 2051
CN_HOUR: Final = 2061
CN_DAY: Final = 2031
CN_INFO: Final = 3020
CN_HEARTBEAT: Final = 9015

WINDOW_S: Final = {CN_MINUTE: 600, CN_HOUR: 3_600, CN_DAY: 86_400}
"""Seconds an aggregate covers: 10-minute data (MinInterval=10), hourly, daily."""

CP_LIMIT: Final = {"2005": 960, "2017": 950, "2025": 950}
"""Largest ``CP=&&...&&`` item (protocol.md 1.2); longer content is split into parts
(PNUM/PNO, one QN each, DataTime repeated: protocol.md 6.5)."""

MAX_SEGMENT: Final = 9_999
"""What the 4-digit length field can express."""

# Flag values by version: (A=0, A=1); the split bit D adds 2.
_FLAGS: Final = {"2005": (0, 1), "2017": (4, 5), "2025": (8, 9)}

JUNK: Final = b"\x00\x01\x00\x00\x00\x06\x01\x03\x00\x00\x00\r\n"
"""A Modbus-TCP probe as seen on HJ 212 ports (field-quirks Q8)."""


@dataclass(frozen=True, slots=True)
class Factor:
    """One monitored factor: codes, value range, decimals, which fields it carries."""

    code: str
    code_2005: str
    lo: float
    hi: float
    decimals: int
    cou: bool = False
    """Has a cumulative amount (flow volume or pollutant mass)."""
    zs: bool = False
    """Has converted (O2-referenced) values."""
    flow: bool = False


_WATER: Final = (
    Factor("w00000", "B01", 5.0, 30.0, 2, cou=True, flow=True),  # flow, L/s
    Factor("w01001", "001", 6.5, 8.5, 2),  # pH
    Factor("w01018", "011", 20.0, 80.0, 1, cou=True),  # COD, mg/L
    Factor("w21003", "060", 0.5, 5.0, 3, cou=True),  # NH3-N
    Factor("w21011", "101", 0.1, 0.5, 3, cou=True),  # TP
    Factor("w21001", "065", 5.0, 15.0, 2, cou=True),  # TN
)
_GAS: Final = (
    Factor("a00000", "B02", 30.0, 60.0, 2, cou=True, flow=True),  # flow, m3/s
    Factor("a21026", "02", 5.0, 35.0, 1, cou=True, zs=True),  # SO2, mg/m3
    Factor("a21002", "03", 20.0, 80.0, 1, cou=True, zs=True),  # NOx
    Factor("a34013", "01", 1.0, 10.0, 2, cou=True, zs=True),  # particulates
    Factor("a19001", "S01", 8.0, 12.0, 1),  # O2, %
    Factor("a01012", "S03", 40.0, 130.0, 1),  # temperature, degC
    Factor("a01013", "S08", -0.5, 0.5, 3),  # static pressure, kPa
    Factor("a01014", "S05", 5.0, 15.0, 1),  # humidity, %
    Factor("a01011", "S02", 8.0, 15.0, 2),  # velocity, m/s
)
_INCINERATOR: Final = (
    *_GAS,
    Factor("a21024", "08", 1.0, 20.0, 2, cou=True, zs=True),  # HCl
    Factor("a21005", "04", 5.0, 50.0, 2, cou=True, zs=True),  # CO
    # No 2005 code exists for the furnace temperature; 2005 units send the 2017 code
    # next to their old ones (field-quirks Q14 sees such mixed packets).
    Factor("a01901", "a01901", 850.0, 1_100.0, 1),
)
FACTORS: Final = {"water": _WATER, "gas": _GAS, "incinerator": _INCINERATOR}

O2_REFERENCE: Final = 11.0
"""Reference O2 (%) of the converted values: waste incineration's; (21-11)/(21-O2)."""

# 3020 content per profile: (PolId or '', ((info code, lo, hi, decimals), ...)).
_INFO: Final = {
    "water": (
        "w01018",
        (
            ("i12001", 0, 0, 0),  # analyser working state: running
            ("i13003", 60, 60, 0),  # measuring interval, min
            ("i13004", 160.0, 170.0, 1),  # digestion temperature, degC
            ("i13005", 30, 30, 0),  # digestion duration, min
            ("i13007", 0.3, 0.7, 2),  # intercept
            ("i13008", 0.95, 1.05, 4),  # slope
        ),
    ),
    "gas": (
        "a21026",
        (
            ("i12001", 0, 0, 0),
            ("i13001", 200, 200, 0),  # measuring range
            ("i13007", 0.1, 0.5, 2),
            ("i13008", 0.98, 1.02, 4),
        ),
    ),
    "incinerator": (
        "",
        (
            ("i33310", 850.0, 1_050.0, 1),  # furnace upper zone, degC
            ("i33320", 880.0, 1_080.0, 1),  # middle zone
            ("i33330", 900.0, 1_100.0, 1),  # lower zone
            ("i33400", 60.0, 100.0, 1),  # production load, %
        ),
    ),
}

_MASK: Final = (1 << 64) - 1
_GOLDEN: Final = 0x9E3779B97F4A7C15
_TWO64: Final = float(1 << 64)
_DAY_RAD: Final = 2.0 * math.pi / 86_400.0


def _mix(x: int) -> int:
    """splitmix64 finaliser: a well-spread 64-bit value from any integer."""
    x = (x + _GOLDEN) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


class _Uniform:
    """A deterministic stream of floats in [0, 1) for one slot."""

    __slots__ = ("state",)

    def __init__(self, seed: int, index: int, cn: int, data_time: int) -> None:
        self.state = _mix(_mix(_mix(_mix(seed) ^ index) ^ cn) ^ data_time)

    def __call__(self) -> float:
        self.state = (self.state + _GOLDEN) & _MASK
        return _mix(self.state) / _TWO64


def local_text(local_s: int, ms: int | None = None) -> str:
    """``YYYYMMDDhhmmss`` (or with ``zzz``) of local wall-clock seconds since 1970."""
    text = time.strftime("%Y%m%d%H%M%S", time.gmtime(local_s))
    return text if ms is None else f"{text}{ms:03d}"


def _fmt(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


def _level(f: Factor, data_time: int, phase: float, u: float) -> float:
    """A daily curve plus noise, mapped into the factor's range."""
    shape = 0.5 + 0.3 * math.sin(data_time * _DAY_RAD + phase) + 0.2 * (u - 0.5)
    return f.lo + (f.hi - f.lo) * shape


def _code(f: Factor, version: str) -> str:
    return f.code_2005 if version == "2005" else f.code


def _flag(u: float) -> str:
    # Mostly normal; now and then calibration or maintenance (HJ 212-2017 Table 8).
    if u < 0.004:
        return "C"
    if u < 0.006:
        return "M"
    return "N"


def realtime_items(spec: DeviceSpec, seed: int, data_time: int) -> list[str]:
    """The CP items of a 2011 upload: ``code-Rtd=...,code-Flag=N`` per factor."""
    u = _Uniform(seed, spec.index, CN_REALTIME, data_time)
    factors = FACTORS[spec.profile]
    values = [_level(f, data_time, spec.dev_phase, u()) for f in factors]
    zs = _zs_factor(factors, values)
    items = []
    for f, v in zip(factors, values, strict=True):
        code = _code(f, spec.version)
        text = f"{code}-Rtd={_fmt(v, f.decimals)}"
        if f.zs:
            text += f",{code}-ZsRtd={_fmt(v * zs, f.decimals)}"
        items.append(f"{text},{code}-Flag={_flag(u())}")
    return items


def _zs_factor(factors: tuple[Factor, ...], values: list[float]) -> float:
    for f, v in zip(factors, values, strict=True):
        if f.code == "a19001":
            return (21.0 - O2_REFERENCE) / (21.0 - v)
    return 1.0


def aggregate_items(spec: DeviceSpec, seed: int, cn: int, data_time: int) -> list[str]:
    """The CP items of a 2051/2061/2031 upload: Cou/Min/Avg/Max/(Zs...)/Flag per factor."""
    u = _Uniform(seed, spec.index, cn, data_time)
    factors = FACTORS[spec.profile]
    window = WINDOW_S[cn]
    avgs = [_level(f, data_time, spec.dev_phase, u()) for f in factors]
    zs = _zs_factor(factors, avgs)
    volume = 0.0  # m3 over the window
    for f, v in zip(factors, avgs, strict=True):
        if f.flow:
            volume = v * window / 1000.0 if spec.profile == "water" else v * window
    per_kg = 1e-3 if spec.profile == "water" else 1e-6  # (mg/L or mg/m3) x m3 -> kg
    items = []
    for f, avg in zip(factors, avgs, strict=True):
        code = _code(f, spec.version)
        spread = (f.hi - f.lo) * 0.08
        a = round(avg, f.decimals)
        lo = min(round(avg - spread * u(), f.decimals), a)
        hi = max(round(avg + spread * u(), f.decimals), a)
        d = f.decimals
        parts = []
        if f.cou:
            cou = volume if f.flow else avg * volume * per_kg
            parts.append(f"{code}-Cou={_fmt(cou, 3 if not f.flow else 1)}")
        parts += [
            f"{code}-Min={_fmt(lo, d)}",
            f"{code}-Avg={_fmt(a, d)}",
            f"{code}-Max={_fmt(hi, d)}",
        ]
        if f.zs:
            parts += [
                f"{code}-ZsMin={_fmt(lo * zs, d)}",
                f"{code}-ZsAvg={_fmt(a * zs, d)}",
                f"{code}-ZsMax={_fmt(hi * zs, d)}",
            ]
        parts.append(f"{code}-Flag={_flag(u())}")
        items.append(",".join(parts))
    return items


def info_items(spec: DeviceSpec, seed: int, data_time: int) -> tuple[str, list[str]]:
    """(PolId or '', the ``iXXXXX-Info=value`` items) of a 3020 parameter upload."""
    u = _Uniform(seed, spec.index, CN_INFO, data_time)
    pol_id, infos = _INFO[spec.profile]
    items = []
    for code, lo, hi, decimals in infos:
        value = lo + (hi - lo) * u()
        items.append(f"{code}-Info={_fmt(value, decimals)}")
    return pol_id, items


def rows_per_frame(spec: DeviceSpec, cn: int) -> tuple[int, int]:
    """(reading rows, info rows) one unsplit frame of ``cn`` stores for this device."""
    if cn in (CN_REALTIME, CN_MINUTE, CN_HOUR, CN_DAY):
        return len(FACTORS[spec.profile]), 0
    if cn == CN_INFO:
        return 0, len(_INFO[spec.profile][1])
    return 0, 0


class OutFrame:
    """One frame a device will send (and may resend), with what it stores."""

    __slots__ = (
        "ack",
        "cn",
        "data",
        "history",
        "infos",
        "key",
        "qn",
        "readings",
        "sent_at",
        "transmitted",
    )

    def __init__(
        self,
        data: bytes,
        qn: str | None,
        cn: int,
        *,
        ack: bool,
        key: tuple[int, int, int],
        readings: int,
        infos: int,
        history: bool = False,
    ) -> None:
        self.data = data
        self.qn = qn
        self.cn = cn
        self.ack = ack
        self.key = key
        """(cn, DataTime in local seconds, part number): a distinct slot of rows."""
        self.readings = readings
        self.infos = infos
        self.history = history
        self.transmitted = False
        self.sent_at = 0.0


def _spaced(item: str) -> str:
    # "w01018-Rtd=35.6" -> "w01018-Rtd = 35.6": spaces on both sides of every '='.
    return item.replace("=", " = ")


def build_frames(
    spec: DeviceSpec,
    seed: int,
    cn: int,
    data_time: int,
    next_qn: Callable[[], str],
    *,
    history: bool = False,
) -> list[OutFrame]:
    """The frame(s) of one slot: several parts when the CP exceeds the version's limit."""
    quirk = spec.quirk
    pol_id = ""
    if cn == CN_REALTIME:
        items = realtime_items(spec, seed, data_time)
    elif cn in WINDOW_S:
        items = aggregate_items(spec, seed, cn, data_time)
    elif cn == CN_INFO:
        pol_id, items = info_items(spec, seed, data_time)
    else:
        items = []
    ack = spec.asks_replies and (cn != CN_REALTIME or spec.ack_realtime)
    if cn == CN_HEARTBEAT:
        prefix = ""
    else:
        ms = None
        if quirk == "time_ms":
            ms = 0 if cn in WINDOW_S else _mix(data_time ^ spec.index) % 1000
        prefix = f"DataTime={local_text(data_time, ms)}"
        if pol_id:
            prefix += f";PolId={pol_id}"
    if quirk == "spaces":
        items = [_spaced(it) for it in items]
    # A unit without Flag cannot mark a split (bit D), so it sends one long frame (Q5).
    limit = MAX_SEGMENT if quirk == "no_qn_flag" else CP_LIMIT[spec.version]
    parts = _pack(prefix, items, limit)
    info_count = len(items) if cn == CN_INFO else 0
    out: list[OutFrame] = []
    split = len(parts) > 1
    base_flag = _FLAGS[spec.version][1 if ack else 0]
    for pno, part_items in enumerate(parts, start=1):
        body = ";".join([prefix, *part_items]) if prefix else ";".join(part_items)
        if quirk == "empty_items" and part_items:
            body = body.replace(";", ";;", 1) + ";"
        qn: str | None = next_qn()
        flag: int | None = base_flag | (2 if split else 0)
        if quirk == "no_qn_flag":
            qn = flag = None
        segment = build_segment(
            qn=qn,
            st=spec.st,
            cn=str(cn),
            pw=spec.pw,
            mn=spec.mn,
            flag=flag,
            cp=body,
            pnum=len(parts) if split else None,
            pno=pno if split else None,
        )
        data = encode_frame(segment)
        if quirk == "crc_lower":
            data = data[:-6] + data[-6:-2].lower() + b"\r\n"
        elif quirk == "tail_lf":
            data = data[:-2] + b"\n"
        readings = len(part_items) if cn in (CN_REALTIME, *WINDOW_S) else 0
        infos = info_count if pno == 1 else 0
        out.append(
            OutFrame(
                data,
                qn,
                cn,
                ack=ack,
                key=(cn, data_time, pno),
                readings=readings,
                infos=infos,
                history=history,
            )
        )
    return out


def _pack(prefix: str, items: list[str], limit: int) -> list[list[str]]:
    """Group items so each part's ``CP=&&prefix;items&&`` stays within ``limit`` bytes."""
    overhead = len("CP=&&&&") + len(prefix.encode())
    parts: list[list[str]] = [[]]
    size = overhead
    for item in items:
        n = len(item.encode()) + 1  # the ';' before it
        if parts[-1] and size + n > limit:
            parts.append([])
            size = overhead
        parts[-1].append(item)
        size += n
    return parts


def qn_text(local_ms: int) -> str:
    """A 17-digit QN (``YYYYMMDDhhmmsszzz``) from local wall-clock milliseconds."""
    return local_text(local_ms // 1000, local_ms % 1000)
