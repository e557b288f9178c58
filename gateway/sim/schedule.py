"""When a simulated unit sends: periodic streams in simulated local time.

Times are whole seconds of local wall-clock time since 1970 (the DAU's clock; DataTime
is local time, protocol.md section 7), so hour and day boundaries fall where a device
in Asia/Shanghai puts them.

Each stream fires at ``k * period + offset``. Aggregates (2051, 2061, 2031) are sent
``offset`` seconds after their window closes and carry the window's start as DataTime;
real-time data (2011), parameters (3020) and heartbeats (9015) carry the send instant.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from gateway.sim.content import (
    CN_DAY,
    CN_HEARTBEAT,
    CN_HOUR,
    CN_INFO,
    CN_MINUTE,
    CN_REALTIME,
)
from gateway.sim.fleet import DeviceSpec

MINUTE_DATA_S: Final = 600
"""2051 every 10 minutes (MinInterval=10, the common setting)."""
INFO_S: Final = 300
"""3020 parameters every 5 minutes."""


class Stream(NamedTuple):
    cn: int
    period: int
    offset: int
    interval: bool
    """DataTime is the start of the window that just closed (else the send instant)."""


class Event(NamedTuple):
    t: int
    """Simulated local second at which the frame is due."""
    cn: int
    data_time: int
    history: bool = False


def streams(spec: DeviceSpec) -> tuple[Stream, ...]:
    """The periodic uploads of one unit, in the order same-second events are sent."""
    out = [
        Stream(CN_REALTIME, spec.rtd_interval_s, spec.offset_rtd, False),
        Stream(CN_MINUTE, MINUTE_DATA_S, spec.offset_minute, True),
        Stream(CN_HOUR, 3_600, spec.offset_hour, True),
        Stream(CN_DAY, 86_400, spec.offset_day, True),
    ]
    if spec.version != "2005":  # 3020 came with HJ 212-2017 (protocol.md 6.7)
        out.append(Stream(CN_INFO, INFO_S, spec.offset_info, False))
    if spec.version == "2025":  # 9015 heartbeat (protocol.md 12)
        out.append(Stream(CN_HEARTBEAT, spec.heartbeat_s, spec.offset_heartbeat, False))
    return tuple(out)


def _first_at_or_after(s: Stream, t: int) -> int:
    k = -((s.offset - t) // s.period)  # ceil((t - offset) / period)
    return k * s.period + s.offset


def _data_time(s: Stream, at: int) -> int:
    return at - s.offset - s.period if s.interval else at


def due(specs: tuple[Stream, ...], t0: int, t1: int) -> list[Event]:
    """Every event with ``t0 <= t < t1``, ordered by time, then by stream order."""
    events: list[tuple[int, int, Event]] = []
    for rank, s in enumerate(specs):
        at = _first_at_or_after(s, t0)
        while at < t1:
            events.append((at, rank, Event(at, s.cn, _data_time(s, at))))
            at += s.period
    events.sort()
    return [e for _, _, e in events]


def next_due(specs: tuple[Stream, ...], t: int) -> int:
    """The first time >= ``t`` at which any stream fires."""
    return min(_first_at_or_after(s, t) for s in specs)


def history(start: int, hours: int) -> list[Event]:
    """The hourly (2061) slots of the ``hours`` whole hours before ``start``, oldest
    first, all due at ``start``: what a unit re-sends after an outage."""
    top = start - start % 3_600
    return [Event(start, CN_HOUR, top - k * 3_600, True) for k in range(hours, 0, -1)]
