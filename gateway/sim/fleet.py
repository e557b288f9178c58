"""Who is in a simulated fleet: one ``DeviceSpec`` per data acquisition unit.

Everything here is a pure function of ``FleetConfig`` (the seed included), so every
process of a multi-process run builds the same fleet and takes its own slice, and a test
can rebuild any device exactly.

Shares (profile, version, quirky devices) are apportioned exactly (largest remainder),
not drawn at random, so a report of 1,000 devices at ``water=0.5`` has 500 water units.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

PROFILES: Final = ("water", "gas", "incinerator")
VERSIONS: Final = ("2005", "2017", "2025")

QUIRKS: Final = (
    "crc_lower",
    "tail_lf",
    "time_ms",
    "spaces",
    "empty_items",
    "split_writes",
    "junk_prefix",
)
"""Quirk kinds any device may show (field-quirks.md): lower-case CRC (Q1), LF-only tail
(protocol.md 1.5), 17-digit DataTime (Q13), spaces around keys and values (protocol.md
3.3), empty items and a trailing ``;`` (Q17), one frame over several TCP writes (Q7),
modem bytes before the first frame of each connection (Q8)."""
QUIRKS_2005: Final = (*QUIRKS, "no_qn_flag")
"""2005 devices may also leave out QN and Flag (Q10); they then never ask for a reply."""

DEFAULT_PROFILE_MIX: Final = {"water": 0.5, "gas": 0.4, "incinerator": 0.1}
DEFAULT_VERSION_MIX: Final = {"2017": 0.8, "2005": 0.1, "2025": 0.1}

RTD_INTERVAL_S: Final = 30
"""HJ 212-2017 default real-time interval (protocol.md 7: 30 <= RtdInterval <= 3600)."""
HEARTBEAT_S: Final = 60
"""2025 devices send a 9015 heartbeat this often (field-quirks Q9; 60 s is the common
modem keep-alive and well inside the gateway's idle timeout)."""
REALTIME_ACK_SHARE: Final = 0.8
"""Share of devices that ask for a 9014 on real-time (2011) data too; the rest send 2011
with A=0 (Flag=4 in 2017, the standard's process-data example) and ack only aggregates."""

MAX_DEVICES: Final = 1_000_000
"""Source addresses are drawn from 127.16.0.0-127.143.255.255 (see ``source_ip``); a
million devices fit with room to spare and no fleet here needs more."""


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """What fleet to simulate. Shares are fractions that ``parse_mix`` normalises."""

    devices: int
    seed: int = 1
    profile_mix: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_PROFILE_MIX))
    version_mix: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_VERSION_MIX))
    quirky_share: float = 0.1
    rtd_interval_s: int = RTD_INTERVAL_S
    heartbeat_s: int = HEARTBEAT_S
    realtime_ack_share: float = REALTIME_ACK_SHARE


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One simulated unit. Offsets are seconds after each period's boundary."""

    index: int
    mn: str
    pw: str
    st: str
    profile: str
    version: str
    quirk: str | None
    ack_realtime: bool
    """2011 uploads ask for a 9014 (all other data uploads always do, unless ``no_qn_flag``)."""
    rtd_interval_s: int
    heartbeat_s: int
    offset_rtd: int
    offset_minute: int
    offset_hour: int
    offset_day: int
    offset_info: int
    offset_heartbeat: int
    dev_phase: float
    """Per-device phase of the daily value curve, so units do not move in step."""

    @property
    def asks_replies(self) -> bool:
        return self.quirk != "no_qn_flag"


def parse_mix(text: str, allowed: Sequence[str]) -> dict[str, float]:
    """``"water=0.5,gas=0.4,incinerator=0.1"`` -> normalised shares; ValueError if bad."""
    shares: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in allowed:
            raise ValueError(f"{part.strip()!r}: want NAME=SHARE with NAME one of {allowed}")
        try:
            share = float(value)
        except ValueError:
            raise ValueError(f"{part.strip()!r}: share is not a number") from None
        if share < 0:
            raise ValueError(f"{part.strip()!r}: share must be >= 0")
        shares[name] = shares.get(name, 0.0) + share
    total = sum(shares.values())
    if total <= 0:
        raise ValueError(f"{text!r}: shares add up to zero")
    return {k: v / total for k, v in shares.items() if v > 0}


def apportion(n: int, shares: Mapping[str, float]) -> dict[str, int]:
    """Split ``n`` into whole counts proportional to ``shares`` (largest remainder)."""
    total = sum(shares.values())
    if n <= 0 or total <= 0:
        return dict.fromkeys(shares, 0)
    exact = {k: n * v / total for k, v in shares.items()}
    counts = {k: int(x) for k, x in exact.items()}
    left = n - sum(counts.values())
    # Ties broken by name so the result never depends on dict order.
    for k in sorted(exact, key=lambda k: (counts[k] - exact[k], k))[:left]:
        counts[k] += 1
    return counts


def _labels(n: int, shares: Mapping[str, float], rng: random.Random) -> list[str]:
    labels = [k for k, c in sorted(apportion(n, shares).items()) for _ in range(c)]
    rng.shuffle(labels)
    return labels


def make_fleet(cfg: FleetConfig) -> list[DeviceSpec]:
    """Every device of the fleet, in index order; a pure function of ``cfg``."""
    n = cfg.devices
    if not 0 < n <= MAX_DEVICES:
        raise ValueError(f"devices must be between 1 and {MAX_DEVICES}")
    rng = random.Random(f"hj212-fleet:{cfg.seed}")
    profiles = _labels(n, cfg.profile_mix, rng)
    versions = _labels(n, cfg.version_mix, rng)
    quirky = set(rng.sample(range(n), round(n * cfg.quirky_share)))
    seed_tag = cfg.seed & 0xFFFF
    out: list[DeviceSpec] = []
    kinds_done = 0
    for i in range(n):
        r = random.Random(f"hj212-device:{cfg.seed}:{i}")
        version = versions[i]
        profile = profiles[i]
        quirk: str | None = None
        if i in quirky:
            kinds = QUIRKS_2005 if version == "2005" else QUIRKS
            quirk = kinds[kinds_done % len(kinds)]
            kinds_done += 1
        if version == "2005":
            mn = f"32{seed_tag % 10_000:04d}{i:08d}"  # 14 characters, 2005 style
        else:
            mn = f"320100{seed_tag:04X}{i:014X}"  # 24 hex characters (EPC-96 text)
        rtd = cfg.rtd_interval_s
        out.append(
            DeviceSpec(
                index=i,
                mn=mn,
                pw=f"{r.randrange(1_000_000):06d}",
                st="32" if profile == "water" else "31",
                profile=profile,
                version=version,
                quirk=quirk,
                ack_realtime=r.random() < cfg.realtime_ack_share,
                rtd_interval_s=rtd,
                heartbeat_s=cfg.heartbeat_s,
                # First sends spread over each period, so the fleet is never in lock-step.
                offset_rtd=r.randrange(rtd),
                offset_minute=r.randrange(5, 60),
                offset_hour=r.randrange(10, 180),
                offset_day=r.randrange(60, 900),
                offset_info=r.randrange(300),
                offset_heartbeat=r.randrange(cfg.heartbeat_s),
                dev_phase=r.random() * 6.283185307179586,
            )
        )
    return out


def source_ip(index: int, generation: int = 0) -> str:
    """A loopback source address for device ``index``; ``generation`` changes it on a
    reconnect, as a modem that redials gets a new carrier address (field-quirks Q21).

    Addresses spread over 127.16.0.0/12 .. 127.143.0.0 so each has its own ephemeral
    ports and a whole fleet never exhausts one address's port range."""
    n = index
    c = 1 + n % 250
    n //= 250
    b = n % 250
    a = 16 + (n // 250) + 16 * (generation % 8)
    return f"127.{a}.{b}.{c}"
