"""Device clock skew from real-time uploads, and when to set the clock (pure: times in).

The skew is the device's clock minus ours. A real-time upload (2011) carries two device
times: ``DataTime`` (the sample instant) and ``QN`` (when the packet was made). When they
are close (``window``), the packet was sent as it was measured, and QN minus the time we
received it is the skew plus the network delay. An upload whose QN is far from its
DataTime is backfilled history and measures nothing; so is one with no QN whose DataTime is
far from receipt (without a QN only skews smaller than the window can be seen).

A clock counts as wrong after ``packets`` such uploads in a row lie beyond ``threshold``
on the same side and agree with each other within ``spread``: a drifting clock gives the
same skew every time, while replayed old packets (old QNs) give skews that change by an
upload interval from one packet to the next. Then ``fire`` is set, at most once per
``period`` per device (the database enforces the same across workers and restarts, and
counts the unanswered tries). A skew beyond the threshold is reported only once a second
packet agrees with it, so a replayed packet is never taken for a clock a day off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

US = 1_000_000


@dataclass(slots=True)
class _Clock:
    run: int = 0
    low_us: int = 0
    high_us: int = 0
    next_fire_us: int = 0


class SkewObservation(NamedTuple):
    skew_s: float
    fire: bool
    """True when this packet completes the evidence for setting the clock."""


class SkewTracker:
    """Per-MN skew evidence. Memory: one small record per device that sent 2011.

    Runs once per real-time upload, so it is kept to a few dict and integer operations.
    """

    def __init__(
        self,
        *,
        threshold_s: float,
        packets: int,
        spread_s: float,
        period_s: float,
        window_s: float,
        max_devices: int = 200_000,
    ) -> None:
        self.threshold_us = int(threshold_s * US)
        self.packets = packets
        self.spread_us = int(spread_s * US)
        self.period_us = int(period_s * US)
        self.window_us = int(window_s * US)
        self._clocks: dict[str, _Clock] = {}
        self.max_devices = max_devices
        """Clocks kept at most; beyond, the one created longest ago is forgotten."""

    def observe(
        self, mn: str, sent_us: int | None, data_time_us: int, received_us: int
    ) -> SkewObservation | None:
        """One real-time upload: ``sent_us`` its QN time and ``data_time_us`` its DataTime
        (both device clock, converted to UTC), ``received_us`` our clock. None when the
        packet tells nothing worth recording: backfilled, or beyond the threshold without a
        packet before it agreeing."""
        if sent_us is not None:
            if not -self.window_us <= sent_us - data_time_us <= self.window_us:
                return None  # made long after it was measured: backfilled
            skew = sent_us - received_us
        else:
            skew = data_time_us - received_us
            if not -self.window_us <= skew <= self.window_us:
                return None
        clock = self._clocks.get(mn)
        if clock is None:
            clock = self._clocks[mn] = _Clock()
            if len(self._clocks) > self.max_devices:
                del self._clocks[next(iter(self._clocks))]
        if -self.threshold_us <= skew <= self.threshold_us:
            clock.run = 0
            return SkewObservation(skew / US, False)
        low, high = clock.low_us, clock.high_us
        if skew < low:
            low = skew
        elif skew > high:
            high = skew
        if clock.run == 0 or (skew > 0) != (clock.low_us > 0) or high - low > self.spread_us:
            clock.run, clock.low_us, clock.high_us = 1, skew, skew
            return None
        clock.run += 1
        clock.low_us, clock.high_us = low, high
        if clock.run >= self.packets and received_us >= clock.next_fire_us:
            clock.next_fire_us = received_us + self.period_us
            return SkewObservation(skew / US, True)
        return SkewObservation(skew / US, False)
