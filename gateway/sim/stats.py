"""What a simulation run counts, merged across processes, and how it is reported."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Final

LATENCY_SAMPLES_MAX: Final = 1_000_000
"""Reply latencies kept per process (reservoir sampling beyond): 8 MB of floats, enough
for exact percentiles of any run here (a 12,000-device backfill storm is ~300,000)."""
ERRORS_KEPT: Final = 20
"""Error messages kept verbatim per process; the rest are only counted."""


@dataclass(slots=True)
class SimStats:
    devices: int = 0
    connected_peak: int = 0
    connected_at_end: int = 0
    connects: int = 0
    connect_errors: int = 0
    disconnects: int = 0
    """Connections the gateway (or the network) closed while the run wanted them open."""
    connect_s: float = 0.0
    """Seconds the initial connection of every device took (slowest process)."""
    frames_sent: int = 0
    """Frames transmitted at least once (resends not included)."""
    bytes_sent: int = 0
    frames_by_cn: dict[int, int] = field(default_factory=dict)
    resends: int = 0
    expected_replies: int = 0
    """Frames sent that ask for a reply (A=1 with a QN)."""
    replied: int = 0
    """Frames whose reply came (matched by QN and CN 9014/9013)."""
    replies_received: int = 0
    """Reply frames received in total (a resend can draw a second reply)."""
    unmatched_replies: int = 0
    bad_replies: int = 0
    """Bytes from the gateway that did not form a valid frame."""
    timeouts: int = 0
    """Reply waits that ran out (OverTime); each is followed by a resend or a give-up."""
    gave_up: int = 0
    """Frames abandoned after ReCount resends without a reply."""
    unsent: int = 0
    """Frames (or due slots) still queued when the run ended."""
    outbox_dropped: int = 0
    undelivered: int = 0
    """Connections closed with written bytes the gateway had not yet acknowledged."""
    rows_reading: int = 0
    """Distinct (mn, cn, data_time, code) reading rows sent."""
    rows_info: int = 0
    """Distinct (mn, cn, data_time, pol_id, info_code) info rows sent."""
    latencies: list[float] = field(default_factory=list)
    latency_count: int = 0
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    cpu_s: float = 0.0
    """CPU time of the simulator process(es) over the run."""
    load_s: float = 0.0
    """Real seconds of the load phase (schedule running)."""
    drain_s: float = 0.0
    storm_devices: int = 0
    storm_reconnected_s: float | None = None
    """Seconds from the storm until the last device was connected again."""
    storm_reconnected: int = 0
    storm_storing_s: float | None = None
    """Seconds from the storm until the last device got its first reply after it."""
    storm_storing: int = 0
    storm_orphans_closed: int = 0
    """Silent storm: old connections the gateway closed (MN taken over by the new one)."""
    storm_orphans_left: int = 0
    """Silent storm: old connections still open at the end of the run."""
    backfill_frames: int = 0
    backfill_done_s: float | None = None
    """Seconds from the start of the load phase until every device finished its history."""
    backfill_devices_done: int = 0
    _rng: random.Random = field(default_factory=lambda: random.Random(212), repr=False)

    def add_latency(self, seconds: float) -> None:
        self.latency_count += 1
        if len(self.latencies) < LATENCY_SAMPLES_MAX:
            self.latencies.append(seconds)
        else:
            j = self._rng.randrange(self.latency_count)
            if j < LATENCY_SAMPLES_MAX:
                self.latencies[j] = seconds

    def error(self, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < ERRORS_KEPT:
            self.errors.append(message)

    def merge(self, other: SimStats) -> None:
        """Add another process's counts to this one."""
        for name in (
            "devices",
            "connected_peak",
            "connected_at_end",
            "connects",
            "connect_errors",
            "disconnects",
            "frames_sent",
            "bytes_sent",
            "resends",
            "expected_replies",
            "replied",
            "replies_received",
            "unmatched_replies",
            "bad_replies",
            "timeouts",
            "gave_up",
            "unsent",
            "outbox_dropped",
            "rows_reading",
            "rows_info",
            "undelivered",
            "error_count",
            "storm_devices",
            "storm_reconnected",
            "storm_storing",
            "storm_orphans_closed",
            "storm_orphans_left",
            "backfill_frames",
            "backfill_devices_done",
            "latency_count",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for cn, n in other.frames_by_cn.items():
            self.frames_by_cn[cn] = self.frames_by_cn.get(cn, 0) + n
        self.latencies.extend(other.latencies)
        self.errors.extend(other.errors[: max(0, ERRORS_KEPT - len(self.errors))])
        self.cpu_s += other.cpu_s
        for name in (
            "connect_s",
            "load_s",
            "drain_s",
            "storm_reconnected_s",
            "storm_storing_s",
            "backfill_done_s",
        ):
            mine, theirs = getattr(self, name), getattr(other, name)
            if theirs is not None and (mine is None or theirs > mine):
                setattr(self, name, theirs)

    @property
    def ok(self) -> bool:
        """Every frame sent and every expected reply received, nothing abandoned."""
        return (
            self.replied == self.expected_replies
            and self.gave_up == 0
            and self.unsent == 0
            and self.outbox_dropped == 0
            and self.undelivered == 0
            and self.connected_at_end == self.devices
        )


def percentile(ordered: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1) of already sorted values; None when empty."""
    if not ordered:
        return None
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered))))
    return ordered[rank - 1]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 2)


def _s(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def summary(stats: SimStats, meta: dict[str, Any]) -> dict[str, Any]:
    """The machine-readable report (``simulate --json``); ``meta`` describes the run."""
    ordered = sorted(stats.latencies)
    load = stats.load_s or None
    out: dict[str, Any] = dict(meta)
    out.update(
        {
            "ok": stats.ok,
            "connections": {
                "devices": stats.devices,
                "connected_at_end": stats.connected_at_end,
                "connected_peak": stats.connected_peak,
                "connects": stats.connects,
                "connect_errors": stats.connect_errors,
                "disconnects": stats.disconnects,
                "connect_s": _s(stats.connect_s),
            },
            "frames": {
                "sent": stats.frames_sent,
                "bytes": stats.bytes_sent,
                "by_cn": {str(k): v for k, v in sorted(stats.frames_by_cn.items())},
                "resends": stats.resends,
                "unsent": stats.unsent,
                "outbox_dropped": stats.outbox_dropped,
                "undelivered_connections": stats.undelivered,
                "per_s": None if load is None else round(stats.frames_sent / load, 1),
            },
            "distinct_rows": {
                "reading": stats.rows_reading,
                "info": stats.rows_info,
                "total": stats.rows_reading + stats.rows_info,
            },
            "replies": {
                "expected": stats.expected_replies,
                "replied": stats.replied,
                "received": stats.replies_received,
                "unmatched": stats.unmatched_replies,
                "bad": stats.bad_replies,
                "timeouts": stats.timeouts,
                "gave_up": stats.gave_up,
            },
            "reply_latency_ms": {
                "count": stats.latency_count,
                "p50": _ms(percentile(ordered, 0.50)),
                "p95": _ms(percentile(ordered, 0.95)),
                "p99": _ms(percentile(ordered, 0.99)),
                "max": _ms(ordered[-1] if ordered else None),
            },
            "phases_s": {"load": _s(stats.load_s), "drain": _s(stats.drain_s)},
            "simulator_cpu_s": _s(stats.cpu_s),
            "errors": {"count": stats.error_count, "first": stats.errors},
        }
    )
    if stats.storm_devices:
        out["reconnect_storm"] = {
            "devices": stats.storm_devices,
            "reconnected": stats.storm_reconnected,
            "reconnected_s": _s(stats.storm_reconnected_s),
            "storing_again": stats.storm_storing,
            "storing_again_s": _s(stats.storm_storing_s),
            "old_connections_closed_by_gateway": stats.storm_orphans_closed,
            "old_connections_left_open": stats.storm_orphans_left,
        }
    if stats.backfill_frames:
        done = stats.backfill_done_s
        out["backfill_storm"] = {
            "frames": stats.backfill_frames,
            "devices_done": stats.backfill_devices_done,
            "done_s": _s(done),
            "frames_per_s": None if not done else round(stats.backfill_frames / done, 1),
        }
    return out


def render_text(report: dict[str, Any]) -> str:
    """A plain table of the report for a terminal."""
    c, f, r, rows, lat = (
        report["connections"],
        report["frames"],
        report["replies"],
        report["distinct_rows"],
        report["reply_latency_ms"],
    )
    lines = [
        f"mode {report['mode']}: {c['devices']} devices over {report['processes']} "
        f"process(es), speed x{report['speed']}, {report['duration_s']} s "
        f"(simulated {report['sim_start']} .. {report['sim_end']})",
        "",
        f"{'devices connected (end / peak)':<34}{c['connected_at_end']} / {c['connected_peak']}",
        f"{'connects / errors / dropped':<34}{c['connects']} / {c['connect_errors']} / "
        f"{c['disconnects']}",
        f"{'frames sent':<34}{f['sent']}  ({f['per_s']}/s, {f['bytes']} bytes)",
        f"{'  by CN':<34}" + ", ".join(f"{k}: {v}" for k, v in f["by_cn"].items()),
        f"{'resends / unsent / undelivered':<34}{f['resends']} / {f['unsent']} / "
        f"{f['undelivered_connections']}",
        f"{'distinct rows sent':<34}reading {rows['reading']}, info {rows['info']}",
        f"{'replies (matched / expected)':<34}{r['replied']} / {r['expected']}  "
        f"(received {r['received']}, unmatched {r['unmatched']}, bad {r['bad']})",
        f"{'timeouts / gave up':<34}{r['timeouts']} / {r['gave_up']}",
        f"{'reply latency ms p50/p95/p99/max':<34}{lat['p50']} / {lat['p95']} / "
        f"{lat['p99']} / {lat['max']}",
    ]
    storm = report.get("reconnect_storm")
    if storm:
        lines.append(
            f"{'reconnect storm':<34}{storm['reconnected']}/{storm['devices']} back in "
            f"{storm['reconnected_s']} s; {storm['storing_again']} storing again in "
            f"{storm['storing_again_s']} s; old connections closed by the gateway "
            f"{storm['old_connections_closed_by_gateway']}, left open "
            f"{storm['old_connections_left_open']}"
        )
    backfill = report.get("backfill_storm")
    if backfill:
        lines.append(
            f"{'backfill storm':<34}{backfill['frames']} history frames, "
            f"{backfill['devices_done']} devices done in {backfill['done_s']} s "
            f"({backfill['frames_per_s']}/s)"
        )
    errors = report["errors"]
    lines.append(f"{'errors':<34}{errors['count']}")
    lines += [f"  {e}" for e in errors["first"][:5]]
    lines.append("result: " + ("ok" if report["ok"] else "INCOMPLETE (see counts above)"))
    return "\n".join(lines)
