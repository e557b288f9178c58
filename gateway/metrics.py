"""Prometheus metrics of the gateway (design.md section 7).

All names start with ``hj212_`` and use base units. Labels are bounded: ``cn`` and ``st``
take the values of the code tables plus ``other``; ``reason``, ``quirk`` and
``crc_variant`` come from the protocol enums or the gateway's own fixed reasons; never an
MN or an IP address (12,000+ devices would mean 12,000+ series per metric).

Counters kept by storage (rows written, duplicates, revisions) are read at scrape time by
a custom collector, so storage/ never imports prometheus.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from storage.base import StoreStats
from storage.spool import SpoolStats
from storage.writer import WriterStats

OTHER = "other"

# Reply latency: DAUs resend after OverTime (5-10 s, protocol.md 6.6), so the buckets
# resolve the group-commit range (tens to hundreds of ms) and the danger zone near 5 s.
REPLY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)
WRITE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_ROW_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 20000)
# Clock skew (device minus gateway, signed): network delay and a resend stay within
# seconds; the 1012 threshold defaults to 60 s; clocks found at hours or a day off.
CLOCK_SKEW_BUCKETS = tuple(
    sorted({s * b for b in (1, 5, 15, 30, 60, 120, 300, 900, 3600, 86400) for s in (-1, 1)})
)
# Outcomes of platform-to-device commands and of answers (bounded label values).
COMMAND_RESULTS = ("done", "failed", "expired")
COMMAND_ANSWER_RESULTS = ("matched", "late", "unmatched")
CLOCK_FIX_OUTCOMES = ("queued", "recent", "pending", "given_up", "error")

# Connection close reasons (the ``reason`` label of hj212_connections_closed_total).
CLOSE_REASONS = (
    "peer_closed",
    "idle_timeout",
    "partial_timeout",
    "too_many_rejects",
    "garbage",
    "write_stalled",
    "superseded",
    "auth_failed",
    "shutdown",
    "error",
)
# Reasons a frame was not stored or not answered beyond the protocol's RejectReason.
GATEWAY_REASONS = ("platform_only", "queue_full")


class _Children:
    """Labelled children of one metric, looked up in a dict.

    ``metric.labels(...)`` costs ~1.5 us per call; the per-frame path calls it several
    times, so it keeps the children here. The label sets are bounded (see the module
    docstring), so the dict is too.
    """

    __slots__ = ("_cache", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._cache: dict[tuple[str, ...], Any] = {}

    def __call__(self, *labels: str) -> Any:
        child = self._cache.get(labels)
        if child is None:
            child = self._cache[labels] = self._metric.labels(*labels)
        return child


class _StoreCollector(Collector):
    """Exposes the store's counters at scrape time."""

    def __init__(self, stats: Callable[[], StoreStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        snap = self._stats()
        rows = CounterMetricFamily(
            "hj212_rows_written", "Rows inserted or updated, by table.", labels=["table"]
        )
        for table, n in sorted(snap.rows_written.items()):
            rows.add_metric([table], n)
        yield rows
        yield CounterMetricFamily(
            "hj212_rows_revised",
            "Rows whose values changed on a resend (revision incremented).",
            value=snap.rows_revised,
        )
        yield CounterMetricFamily(
            "hj212_rows_duplicate",
            "Rows that arrived again with unchanged values (nothing written).",
            value=snap.duplicates,
        )
        paths = CounterMetricFamily(
            "hj212_batches", "Batches written, by write path.", labels=["path"]
        )
        paths.add_metric(["copy"], snap.batches_copy)
        paths.add_metric(["upsert"], snap.batches_upsert)
        yield paths
        errors = CounterMetricFamily(
            "hj212_store_errors", "Store operation failures, by kind.", labels=["kind"]
        )
        for kind, n in sorted(snap.write_errors.items()):
            errors.add_metric([kind], n)
        yield errors


class _QueueCollector(Collector):
    """Queue depth, capacity and paused connections, read at scrape time."""

    def __init__(self, read: Callable[[], tuple[int, int, int, int]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth, capacity, paused, sessions = self._read()
        yield GaugeMetricFamily(
            "hj212_write_queue_rows", "Rows waiting for the database.", value=depth
        )
        yield GaugeMetricFamily(
            "hj212_write_queue_capacity_rows", "Rows the write queue may hold.", value=capacity
        )
        yield GaugeMetricFamily(
            "hj212_connections_paused", "Connections whose reading is paused.", value=paused
        )
        yield GaugeMetricFamily(
            "hj212_sessions", "MNs currently mapped to a live connection.", value=sessions
        )


WRITER_MODES = ("direct", "spool", "blocked")
# (metric, help, SpoolStats attribute): gauges, then counters (``_total`` is appended).
SPOOL_GAUGES = (
    ("hj212_spool_batches", "Batches in the local spool not yet in the database.", "batches"),
    ("hj212_spool_rows", "Rows in the local spool not yet in the database.", "rows"),
    ("hj212_spool_bytes", "Bytes of spool files on disk.", "bytes"),
    ("hj212_spool_capacity_bytes", "Bytes the spool may use (spool_max_bytes).", "max_bytes"),
    ("hj212_spool_segments", "Spool files on disk.", "segments"),
    ("hj212_spool_has_room", "1 while the spool accepts batches.", "has_room"),
    (
        "hj212_spool_drain_rows_per_second",
        "Rows drained from the spool into the database per second (last 10 s).",
        "drain_rows_per_s",
    ),
)
SPOOL_COUNTERS = (
    ("hj212_spool_appended_batches", "Batches made durable in the spool.", "appended_batches"),
    ("hj212_spool_appended_rows", "Rows made durable in the spool.", "appended_rows"),
    ("hj212_spool_drained_batches", "Spooled batches moved into the database.", "drained_batches"),
    ("hj212_spool_drained_rows", "Spooled rows moved into the database.", "drained_rows"),
    (
        "hj212_spool_recovered_batches",
        "Batches found in the spool at start (left by an earlier run).",
        "recovered_batches",
    ),
    ("hj212_spool_recovered_rows", "Rows found in the spool at start.", "recovered_rows"),
    ("hj212_spool_torn_records", "Torn or corrupt spool records skipped.", "torn_records"),
    ("hj212_spool_torn_bytes", "Bytes of torn or corrupt spool records skipped.", "torn_bytes"),
    ("hj212_spool_refused_full", "Batches refused because the spool was full.", "refused_full"),
    ("hj212_spool_errors", "Spool appends that failed on a disk error.", "errors"),
)


class _SpoolCollector(Collector):
    """The writer's mode and the local spool's depth and traffic, read at scrape time."""

    def __init__(
        self, writer: Callable[[], WriterStats], spool: Callable[[], SpoolStats | None]
    ) -> None:
        self._writer = writer
        self._spool = spool

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        w = self._writer()
        mode = GaugeMetricFamily(
            "hj212_writer_mode",
            "1 for the writer's current mode: direct (to the database), spool (batches go "
            "to the local spool while it drains), blocked (neither takes them: no replies).",
            labels=["mode"],
        )
        for name in WRITER_MODES:
            mode.add_metric([name], 1 if w.mode == name else 0)
        yield mode
        snap = self._spool()
        if snap is None:
            return
        for name, doc, attr in SPOOL_GAUGES:
            yield GaugeMetricFamily(name, doc, value=float(getattr(snap, attr)))
        for name, doc, attr in SPOOL_COUNTERS:
            yield CounterMetricFamily(name, doc, value=getattr(snap, attr))
        yield CounterMetricFamily(
            "hj212_spool_poison_rows",
            "Spooled (already replied) rows the database then refused for good.",
            value=w.spool_poison_rows,
        )
        yield CounterMetricFamily(
            "hj212_spool_drain_errors",
            "Unexpected drain failures (disk errors reading or acknowledging the spool).",
            value=w.spool_drain_errors,
        )


class ForwardGauge(NamedTuple):
    """What the forwarder reports per upstream at scrape time (gateway/forward)."""

    upstream: str
    queued: int
    """Outbox frames of this worker not yet settled (counted every few seconds)."""
    lag_s: float
    """Age of the oldest of them (since the gateway received it)."""
    connections: int


class _ForwardCollector(Collector):
    """Per-upstream gauges of the forwarder, read at scrape time."""

    def __init__(self, read: Callable[[], Iterable[ForwardGauge]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauges = list(self._read())
        queued = GaugeMetricFamily(
            "hj212_forward_queued_frames",
            "Frames in the outbox not yet delivered to the upstream.",
            labels=["upstream"],
        )
        lag = GaugeMetricFamily(
            "hj212_forward_lag_seconds",
            "Age of the oldest frame not yet delivered to the upstream (0: none waiting); "
            "the largest over the workers.",
            labels=["upstream"],
        )
        conns = GaugeMetricFamily(
            "hj212_forward_connections",
            "Open connections to the upstream.",
            labels=["upstream"],
        )
        for g in gauges:
            queued.add_metric([g.upstream], g.queued)
            lag.add_metric([g.upstream], g.lag_s)
            conns.add_metric([g.upstream], g.connections)
        yield queued
        yield lag
        yield conns


def _version() -> str:
    try:
        return metadata.version("hj212-gateway")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"


class Metrics:
    """Every metric object, registered on one registry passed in (no global state)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        known_cns: Iterable[str],
        known_sts: Iterable[str],
        reject_reasons: Iterable[str],
        quirks: Iterable[str],
        crc_variants: Iterable[str],
    ) -> None:
        self.registry = registry
        self.known_cns = frozenset(known_cns)
        self.known_sts = frozenset(known_sts)
        r = registry
        self.build_info = Gauge(
            "hj212_gateway_build_info",
            "Build information (value 1).",
            ["version", "python"],
            registry=r,
        )
        self.build_info.labels(_version(), platform.python_version()).set(1)
        self.connections_open = Gauge(
            "hj212_connections_open", "Open device connections.", registry=r
        )
        self.connections_accepted = Counter(
            "hj212_connections_accepted", "Device connections accepted.", registry=r
        )
        self.connections_refused = Counter(
            "hj212_connections_refused",
            "Connections refused at accept time, by reason.",
            ["reason"],
            registry=r,
        )
        self.connections_closed = Counter(
            "hj212_connections_closed", "Connections closed, by reason.", ["reason"], registry=r
        )
        self.frames = Counter(
            "hj212_frames",
            "Frames received, by CN, protocol version and result.",
            ["cn", "version", "result"],
            registry=r,
        )
        self.rejects = Counter(
            "hj212_rejects", "Rejected frames and byte runs, by reason.", ["reason"], registry=r
        )
        self.quirks = Counter(
            "hj212_quirks",
            "Accepted deviations from the standard, by quirk.",
            ["quirk"],
            registry=r,
        )
        self.crc_variants = Counter(
            "hj212_crc_variant",
            "Frames by the CRC algorithm that matched (accepted or not).",
            ["crc_variant"],
            registry=r,
        )
        self.resync_bytes = Counter(
            "hj212_resync_bytes", "Bytes skipped to find the next frame start.", registry=r
        )
        self.bytes_in = Counter("hj212_bytes_received", "Bytes received from devices.", registry=r)
        self.bytes_out = Counter("hj212_bytes_sent", "Bytes sent to devices.", registry=r)
        self.replies = Counter("hj212_replies", "Replies sent, by CN.", ["cn"], registry=r)
        self.reply_latency = Histogram(
            "hj212_reply_latency_seconds",
            "From frame received to reply written (includes the wait for durability).",
            buckets=REPLY_BUCKETS,
            registry=r,
        )
        self.rows_refused = Counter(
            "hj212_rows_refused",
            "Rows not accepted into the write queue (no reply sent), by reason.",
            ["reason"],
            registry=r,
        )
        self.archive_dropped = Counter(
            "hj212_rejected_frames_not_archived",
            "Rejected frames over the per-connection archive rate (counted only).",
            registry=r,
        )
        self.batch_rows = Histogram(
            "hj212_batch_rows", "Rows per database batch.", buckets=BATCH_ROW_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "hj212_batch_write_seconds",
            "Time to write one batch, by outcome.",
            ["outcome"],
            buckets=WRITE_BUCKETS,
            registry=r,
        )
        self.writer_retries = Counter(
            "hj212_writer_retries", "Batch write attempts that failed and were retried.", registry=r
        )
        self.writer_errors = Counter(
            "hj212_writer_errors", "Failed batch writes, by error kind.", ["kind"], registry=r
        )
        self.auth_refused = Counter(
            "hj212_auth_refused",
            "Frames refused by the auth policy (nothing stored, no reply), by reason.",
            ["reason"],
            registry=r,
        )
        self.auth_quarantined = Counter(
            "hj212_auth_quarantined",
            "Frames from unknown MNs archived in quarantine (auth.policy = quarantine).",
            registry=r,
        )
        self.auth_passwords_recorded = Counter(
            "hj212_auth_passwords_recorded",
            "First passwords recorded for registered devices that had none.",
            registry=r,
        )
        self.connections_throttled = Counter(
            "hj212_connections_throttled",
            "Times a connection's reading was paused by listen.max_frames_per_s.",
            registry=r,
        )
        self.session_takeovers = Counter(
            "hj212_session_takeovers",
            "MNs that moved to a newer connection (reconnects, field-quirks Q21).",
            registry=r,
        )
        self.unflushed_rows = Counter(
            "hj212_shutdown_unflushed_rows",
            "Rows still queued when the shutdown deadline passed (never replied to).",
            registry=r,
        )
        # -- platform-to-device commands (gateway/commands) --
        self.commands = Counter(
            "hj212_commands",
            "Platform-to-device commands that ended, by CN and result (done, failed, expired).",
            ["cn", "result"],
            registry=r,
        )
        self.command_frames = Counter(
            "hj212_command_frames_sent",
            "Command frames written to devices (first sends and resends), by CN.",
            ["cn"],
            registry=r,
        )
        self.command_answers = Counter(
            "hj212_command_answers",
            "Device answers (9011/9012/9013, data answers) by match: matched, late (its "
            "command had ended), unmatched.",
            ["result"],
            registry=r,
        )
        self.clock_skew = Histogram(
            "hj212_clock_skew_seconds",
            "Device clock minus gateway clock, measured on real-time uploads: each device's "
            "latest value once per presence interval.",
            buckets=CLOCK_SKEW_BUCKETS,
            registry=r,
        )
        self.clock_fixes = Counter(
            "hj212_clock_fixes",
            "Automatic 1012 decisions for clocks found off, by outcome (queued, recent, "
            "pending, given_up, error).",
            ["outcome"],
            registry=r,
        )
        for result in COMMAND_ANSWER_RESULTS:
            self.command_answers.labels(result)
        for outcome in CLOCK_FIX_OUTCOMES:
            self.clock_fixes.labels(outcome)
        # -- forwarding to upstream platforms (gateway/forward); ``upstream`` label values
        # are the configured names --
        self.forward_queued = Counter(
            "hj212_forward_queued",
            "Frames read from the outbox to send, by upstream.",
            ["upstream"],
            registry=r,
        )
        self.forward_sent = Counter(
            "hj212_forward_sent",
            "Frames written to upstream connections (resends included), by upstream.",
            ["upstream"],
            registry=r,
        )
        self.forward_retries = Counter(
            "hj212_forward_retries",
            "Frames written again (connection lost, or no 9014 in time), by upstream.",
            ["upstream"],
            registry=r,
        )
        self.forward_confirmed = Counter(
            "hj212_forward_confirmed",
            "Frames delivered, by upstream and by what: 9014 (the upstream's reply) or write "
            "(the frame asked for no reply).",
            ["upstream", "by"],
            registry=r,
        )
        self.forward_given_up = Counter(
            "hj212_forward_given_up",
            "Frames settled without delivery, by upstream and reason: unanswered (no 9014 "
            "after every resend), refused (a rewrite failed its check; never sent).",
            ["upstream", "reason"],
            registry=r,
        )
        self.forward_connect_failures = Counter(
            "hj212_forward_connect_failures",
            "Failed connection attempts to an upstream, by upstream.",
            ["upstream"],
            registry=r,
        )
        self.frame = _Children(self.frames)
        self.reject = _Children(self.rejects)
        self.quirk = _Children(self.quirks)
        self.crc_variant = _Children(self.crc_variants)
        self.reply = _Children(self.replies)
        self._preinitialise(reject_reasons, quirks, crc_variants)

    def _preinitialise(
        self, reasons: Iterable[str], quirks: Iterable[str], variants: Iterable[str]
    ) -> None:
        """Create the known label sets at 0 so series exist before the first event."""
        for reason in (*reasons, *GATEWAY_REASONS):
            self.rejects.labels(reason)
        for quirk in quirks:
            self.quirks.labels(quirk)
        for variant in variants:
            self.crc_variants.labels(variant)
        for reason in CLOSE_REASONS:
            self.connections_closed.labels(reason)
        for reason in ("queue_full", "shutdown"):
            self.rows_refused.labels(reason)
        for cn in ("9013", "9014"):
            self.replies.labels(cn)
        for reason in ("unknown_mn", "disabled", "bad_password"):
            self.auth_refused.labels(reason)
        self.connections_refused.labels("max_connections")
        self.connections_refused.labels("max_connections_per_ip")

    def cn_label(self, cn: str | None) -> str:
        return cn if cn in self.known_cns else OTHER

    def add_store_collector(self, stats: Callable[[], StoreStats]) -> None:
        self.registry.register(_StoreCollector(stats))

    def add_queue_collector(self, read: Callable[[], tuple[int, int, int, int]]) -> None:
        self.registry.register(_QueueCollector(read))

    def add_forward_collector(self, read: Callable[[], Iterable[ForwardGauge]]) -> None:
        self.registry.register(_ForwardCollector(read))

    def add_spool_collector(
        self, writer: Callable[[], WriterStats], spool: Callable[[], SpoolStats | None]
    ) -> None:
        self.registry.register(_SpoolCollector(writer, spool))
