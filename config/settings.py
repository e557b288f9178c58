"""Settings of hj212-gateway: one frozen tree of sections, validated once at start.

Precedence (design.md section 5): CLI flags > environment (``HJ212_`` prefix, ``__``
between section and key) > TOML file (``--config``) > the defaults below.

Every bound the gateway enforces is a field here with the reason for its default. The
sections are plain ``BaseModel``s under one ``BaseSettings`` root (nested
``BaseSettings`` do not read the parent's sources). config/ imports nothing of ours.
"""

from __future__ import annotations

from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ListenConfig(_Section):
    """Where devices connect, and the bounds on what one connection may cost."""

    host: str = "0.0.0.0"
    port: int = Field(2121, ge=0, le=65535)
    """TCP port; 0 picks a free port, named in the startup log line."""
    max_connections: int = Field(19_000, ge=1)
    """Per worker process. One process may open at most 20,000 files here (``ulimit -Hn``);
    this leaves room for the database pool, the metrics listener and log files."""
    max_connections_per_ip: int = Field(0, ge=0)
    """0 = no per-IP cap. DAUs behind one carrier NAT share an address, so a low cap
    would refuse real devices; set it where devices have their own addresses."""
    idle_timeout_s: float = Field(900.0, gt=0)
    """A connection that sends nothing for this long is closed. HJ 212-2017 has no
    heartbeat and hourly-only devices exist, but a 2011 device sends every 30-60 s;
    15 minutes reaps half-open sockets while keeping slow senders."""
    partial_frame_timeout_s: float = Field(120.0, gt=0)
    """A half-received frame older than this is dropped (field-quirks Q7: 2 minutes)."""
    max_buffer_bytes: int = Field(65_536, ge=2_048)
    """Bytes buffered per connection while waiting for a frame's end. A legal frame is at
    most 1,036 bytes, the 4-digit length field allows 10,012; 64 KiB holds several
    maximal frames and bounds 19,000 connections to 1.2 GB in the worst case."""
    max_write_buffer_bytes: int = Field(65_536, ge=1_024)
    """A peer that does not read its replies is disconnected once this much is queued
    (the transport's write high-water mark). A reply is ~90 bytes and a command ~300, so
    64 KiB is hundreds of unread answers: no reading device gets near it."""
    max_frames_per_s: float = Field(100.0, ge=0)
    """Frames (accepted or rejected) one connection may deliver per second, averaged over
    ``frame_burst``; above it the connection's reading pauses until it is back within the
    rate, so TCP slows the sender and nothing is lost. 0 = no limit. A DAU waits for each
    reply, so even a backfill comes in at a few frames a second; 100/s leaves room for a
    relay carrying a few thousand MNs (one upload each per 30 s) while keeping one
    misbehaving peer from taking the worker's CPU."""
    frame_burst: int = Field(1_000, ge=1)
    """Frames a connection may deliver at once before ``max_frames_per_s`` applies: a
    relay's reconnect or a multi-outlet DAU's hourly burst passes without a pause."""
    garbage_limit_bytes: int = Field(65_536, ge=1_024)
    """A connection that sends this many bytes without one valid frame is closed (Q8)."""
    max_rejects_before_close: int = Field(100, ge=1)
    """Rejected frames in a row before the connection is closed."""
    reuse_port: bool = False
    """Set SO_REUSEPORT (several worker processes on one port)."""
    workers: int = Field(1, ge=1, le=64)
    """Worker processes sharing the port (SO_REUSEPORT) under one supervisor. One process
    may open at most 20,000 files here, so fleets beyond ~19,000 devices need several;
    more workers than cores only add context switches."""


class ProtocolConfig(_Section):
    """How strictly frames are read."""

    lenient: bool = True
    """Accept and count the tolerant paths of protocol.md 1.3-1.5 and 3.3."""
    max_frame_bytes: int = Field(10_012, ge=64, le=1_048_576)
    """Largest frame accepted: what the 4-digit length can express (9999 + 12 bytes of
    envelope); devices do exceed the standard's 1,024 (field-quirks Q5)."""
    crc_variants: tuple[Literal["hj212", "modbus", "modbus_swapped"], ...] = ("hj212",)
    """CRC algorithms accepted for every device; the registry may allow more per device."""
    timezone: str = "Asia/Shanghai"
    """Device times are local wall-clock time in this zone; stored as UTC."""
    profile: str = "2017"
    """Default code-table profile for devices the registry does not name."""
    reply_without_qn: bool = False
    """Reply to frames that carry no QN when their Flag asks (Q10: platforms disagree)."""


class AckConfig(_Section):
    policy: Literal["durable", "on_receive"] = "durable"
    """``durable``: reply only once the packet's rows are committed (or spooled).
    ``on_receive``: reply once the rows are queued; weaker: a crash loses replied data."""


class StorageConfig(_Section):
    """The database and the batch writer in front of it."""

    dsn: SecretStr | None = None
    """PostgreSQL DSN. Unset: the embedded SQLite file at ``sqlite_path``."""
    sqlite_path: str = "./hj212.sqlite3"
    pool_min: int = Field(1, ge=1)
    pool_max: int = Field(4, ge=1)
    """Connections: one writer plus presence, migrations and command work."""
    batch_rows: int = Field(5_000, ge=1)
    """Flush when this many rows are queued: COPY in 5k-row batches runs ~40 % faster
    than 1k (performance.md section 4)."""
    linger_ms: int = Field(200, ge=1, le=5_000)
    """...or when the oldest queued row is this old. Replies wait for the flush, and DAUs
    time out after 5-10 s, so a few hundred ms is both cheap and safe."""
    queue_rows: int = Field(200_000, ge=1_000)
    """Rows held in memory waiting for the database (about 40 s of a 12,000-device fleet
    at ~4,500 rows/s; ~300 B per row -> ~60 MB)."""
    high_water: float = Field(0.7, gt=0, lt=1)
    """Fraction of ``queue_rows`` at which every connection pauses reading."""
    low_water: float = Field(0.4, gt=0, lt=1)
    """Fraction at which reading resumes."""
    retry_initial_ms: int = Field(200, ge=1)
    retry_max_ms: int = Field(5_000, ge=1)
    """Capped exponential backoff between attempts of a failed batch."""
    write_timeout_s: float = Field(30.0, gt=0)
    """A batch that takes longer is abandoned and retried (its replies were not sent)."""
    archive_rejected_per_minute: int = Field(60, ge=0)
    """Rejected frames archived per connection per minute; the rest are only counted."""
    frame_retention_days: int = Field(30, ge=1)
    """The raw frame archive is kept this long (partition drop / retention policy)."""
    reading_retention_days: int = Field(0, ge=0)
    """0 = keep readings forever (hourly and daily data are legal records)."""
    compress_after_days: int = Field(14, ge=1)
    """TimescaleDB only: devices revise recent data, so compress only older chunks."""
    presence_interval_s: float = Field(5.0, gt=0)
    """hj212.presence is written at most this often per device."""
    spool_enabled: bool = True
    """Keep batches the database cannot take now in a local spool on disk and reply once
    they are fsynced there (design.md section 2), so an outage costs no data and devices
    need not resend. Off: such batches wait in memory, unanswered, until the database
    answers (reading pauses at high water)."""
    spool_dir: str | None = None
    """Spool directory (each worker process uses its own ``worker-N`` subdirectory, locked).
    Unset: ``<sqlite_path>-spool`` next to the SQLite file, or ``./hj212-spool`` with a
    DSN. Put it on a local disk with room for ``spool_max_bytes``."""
    spool_max_bytes: int = Field(4 * 1024**3, ge=64 * 1024**2)
    """Disk the spool may use per worker. A spooled row costs ~130 B, so a 12,000-device
    fleet (~4,500 rows/s) fills 4 GiB in about two hours of database outage. When it is
    full, no more replies: the write queue fills and reading pauses."""
    spool_segment_bytes: int = Field(16 * 1024**2, ge=64 * 1024)
    """Spool file size: disk comes back one fully drained file at a time, and recovery
    reads one file at a time; 16 MiB is ~30 s of a full fleet, 256 files at the default
    ``spool_max_bytes``."""
    spool_after_s: float = Field(2.0, gt=0, le=30)
    """A batch the database has not committed this long after its write began (retries
    of a failed write included) goes to the spool. A healthy 5,000-row commit takes tens
    of ms; 2 s plus the linger keeps replies well inside a 5-10 s DAU timeout."""

    @model_validator(mode="after")
    def _water_marks(self) -> StorageConfig:
        if self.low_water >= self.high_water:
            raise ValueError("storage.low_water must be below storage.high_water")
        if self.pool_max < self.pool_min:
            raise ValueError("storage.pool_max must be >= storage.pool_min")
        if self.spool_max_bytes < 2 * self.spool_segment_bytes:
            raise ValueError("storage.spool_max_bytes must be >= 2 * storage.spool_segment_bytes")
        return self


class AuthConfig(_Section):
    policy: Literal["open", "registry", "quarantine"] = "open"
    """``open`` stores every device; ``registry`` only registered MNs with the right
    password; ``quarantine`` stores unknown MNs apart until approved."""
    max_failures: int = Field(5, ge=1)
    """Refused frames in a row (unknown MN, disabled device, wrong password) before the
    connection is closed: a DAU resends every 10 s or so, so 5 is about a minute of
    retries, enough to see the failure in the logs, then the socket is freed."""
    refresh_s: float = Field(30.0, gt=0)
    """The registry is re-read this often, so ``hj212-gateway device`` edits apply
    without a restart."""


class MetricsConfig(_Section):
    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = Field(9212, ge=0, le=65535)


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    """``auto``: console on a TTY, JSON otherwise."""


# Names label the ``upstream`` metrics and key the outbox rows: short, lower-case, fixed by
# the operator, so the label stays bounded (design.md section 7).
UPSTREAM_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"
# Host names that always mean "this machine" (the loop check of ``Settings``).
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", "::", ""})


class RewriteConfig(_Section):
    """Changes an upstream platform needs in what it receives. None by default: the frames
    are relayed byte for byte. A rewritten frame is rebuilt by the protocol encoder, then
    decoded and CRC-checked again before it is sent (field-quirks Q23); a frame that fails
    that check is never sent (counted as refused)."""

    passwords: dict[str, SecretStr] = {}
    """MN -> the access password (``PW``) the upstream assigned to that device."""
    password: SecretStr | None = None
    """``PW`` for every device not in ``passwords``; unset: the device's own is kept."""
    flag_version: Literal["2005", "2017", "2025"] | None = None
    """Set the Flag version bits (``Flag >> 2``, protocol.md section 4) to this version's,
    for platforms that expect one version; the A and D bits are kept."""

    @property
    def active(self) -> bool:
        return bool(self.passwords) or self.password is not None or self.flag_version is not None


class UpstreamConfig(_Section):
    """One upstream HJ 212 platform (a provincial platform, say) and what it receives."""

    name: str = Field(pattern=UPSTREAM_NAME_PATTERN)
    """Label of its metrics and key of its outbox rows: renaming it starts a new queue."""
    host: str
    port: int = Field(ge=1, le=65535)
    mode: Literal["per_device", "shared"] = "per_device"
    """``per_device``: one upstream connection per device, as most platforms bind a
    device's identity to its connection (opened when the device has frames to forward,
    closed after ``forward.idle_close_s``). ``shared``: every device on one connection."""
    mns: tuple[str, ...] = ()
    """Forward only these MNs; empty: every device."""
    sts: tuple[str, ...] = ()
    """Forward only these system codes (``ST``); empty: every ST."""
    cns: tuple[str, ...] = ()
    """Forward only these command codes (``CN``); empty: every upload (a CN whose device
    role is ``upload``: 2011, 2051, 2061, 2031, 2041, 2021, 2081, 3020 ...). Answers to the
    gateway's own commands and notifications are forwarded only when listed here."""
    rewrite: RewriteConfig = RewriteConfig()


class ForwardConfig(_Section):
    """Store and forward to upstream platforms (city-to-province data sharing).

    Every accepted frame selected for an upstream is queued in the outbox
    (``hj212.forward_outbox``) in the transaction that stores it (or with it in the spool
    while the database is down), and sent from there in order per device until the
    upstream confirms it: by its 9014 when the frame asked for a reply (Flag bit A),
    else once written to the upstream's connection."""

    upstreams: tuple[UpstreamConfig, ...] = ()
    connect_timeout_s: float = Field(10.0, gt=0)
    """A connection attempt that takes longer counts as failed (then retried with backoff)."""
    confirm_timeout_s: float = Field(20.0, gt=0)
    """How long a sent frame that asked for a reply waits for the upstream's 9014 before it
    is sent again on the same connection. A DAU resends after 5-10 s (protocol.md 6.6); a
    platform behind a database may take longer, and an early resend is a duplicate for it."""
    confirm_resends: int = Field(3, ge=0, le=100)
    """Resends on a live connection without any 9014 after which the frame is recorded as
    ``unanswered`` and the device's next frame goes: an upstream that never answers one
    kind of frame must not stall the device forever (a lost connection does not count)."""
    retry_initial_s: float = Field(1.0, gt=0)
    retry_max_s: float = Field(60.0, gt=0)
    """Capped exponential backoff (with jitter) between connection attempts to an upstream
    that refuses or drops them: an outage of hours costs one attempt a minute."""
    idle_close_s: float = Field(300.0, gt=0)
    """A per-device upstream connection with nothing to send is closed after this long. A
    device uploads every 30-60 s (real-time) to 10 min (minute data): five minutes keeps the
    connection of a regular sender open and frees the rest."""
    max_connections: int = Field(4_000, ge=1)
    """Upstream connections of one worker process in ``per_device`` mode (all upstreams
    together); at the limit the idlest is closed for the next, or the device waits. The
    effective cap also leaves room for ``listen.max_connections`` device sockets under the
    process's file limit (20,000 here): a 12,000-device fleet forwarded per device needs
    several workers (each forwards the devices whose frames it received)."""
    connect_concurrency: int = Field(200, ge=1)
    """Connection attempts in flight at once per upstream: when a platform comes back,
    12,000 per-device connections are opened in waves, not in one SYN storm."""
    shared_window: int = Field(64, ge=1, le=10_000)
    """Frames awaiting the upstream's 9014 at once on a ``shared`` connection (each device
    waits for the 9014 of its previous frame, as a DAU does, so order holds per device)."""
    memory_frames: int = Field(20_000, ge=100)
    """Outbox frames held in memory per upstream and worker (~1 KB each with their bytes,
    so ~20 MB); a larger backlog waits in the database and is read as these are confirmed.
    20,000 is more than a minute of a 12,000-device fleet at one frame per 30 s."""
    load_frames: int = Field(2_000, ge=1)
    """Outbox rows read per query (in id order, which is the order frames were stored)."""
    poll_interval_s: float = Field(1.0, gt=0, le=60)
    """How often the outbox is read without a new batch having been committed (frames
    moved from the spool into the database, rows confirmed by another process)."""
    confirm_flush_s: float = Field(0.2, gt=0, le=10)
    """Confirmations are written to the outbox in one statement at most this often. A crash
    loses at most this much of them: those frames are sent again (at least once)."""
    keep_confirmed_hours: float = Field(24.0, gt=0)
    """Confirmed outbox rows are deleted after this long. Until then a resent frame (same
    bytes) is recognised and not forwarded again: DAUs resend within minutes, and a day
    covers the backfills that follow an outage of the device's link."""
    prune_interval_s: float = Field(600.0, gt=0)
    """How often confirmed rows past ``keep_confirmed_hours`` are deleted (in chunks)."""
    stats_interval_s: float = Field(5.0, gt=0)
    """How often the outbox backlog per upstream is counted for the ``queued`` gauge."""

    @model_validator(mode="after")
    def _check(self) -> ForwardConfig:
        names = [u.name for u in self.upstreams]
        if len(set(names)) != len(names):
            raise ValueError("forward.upstreams: names must be unique")
        if self.retry_max_s < self.retry_initial_s:
            raise ValueError("forward.retry_max_s must be >= forward.retry_initial_s")
        return self


class ShutdownConfig(_Section):
    drain_timeout_s: float = Field(10.0, gt=0)
    """On SIGTERM, queued rows get this long to reach the database; what is left is
    counted and logged, and its replies were never sent, so devices resend it."""


class CommandsConfig(_Section):
    """Platform-to-device commands (``hj212.command``, protocol.md 6.3-6.6)."""

    timeout_s: float = Field(10.0, gt=0, le=600)
    """How long to wait for the 9011 of a command before sending it again, for devices whose
    OverTime was never set with CN 1000 (then the value set there is used). 10 s is the
    standard's default for GPRS/4G links (protocol.md 6.6)."""
    retries: int = Field(3, ge=0, le=99)
    """Resends without a 9011 before the command fails (``no_answer``), unless ReCount was
    set with CN 1000. 3 is the standard's default (protocol.md 6.6)."""
    result_timeout_s: float = Field(60.0, gt=0)
    """After ``QnRtn=1``, how long to wait for the 9012 (or the data answer) of a setting or
    a read: the DAU applies a setting at once, and reading an analyser over its serial
    line takes seconds, so a minute is generous."""
    long_result_timeout_s: float = Field(3_600.0, gt=0)
    """The same wait for commands that run an analyser cycle (``long_running_cns``): a
    calibration or a sample of a COD analyser takes 30-60 minutes before its 9012."""
    long_running_cns: tuple[str, ...] = ("3011", "3012", "3013", "3014", "3015", "3022", "3024")
    """Calibration, sampling, cleaning, comparison sampling, sample retention, and the 2025
    retention task and standard check (protocol.md 6.2, 12)."""
    history_idle_timeout_s: float = Field(120.0, gt=0)
    """During a history fetch, the longest silence between two uploads (or before the
    9012). Each upload waits for its 9014, sent once its rows are durable (well under a
    second), then the DAU reads the next slot from its flash: two minutes of silence means
    it has stopped."""
    ttl_s: float = Field(3_600.0, gt=0)
    """A command not yet sent (device offline, or busy with an earlier command) expires after
    this long, unless the row sets its own ``ttl``. A DAU that drops off is usually back
    within minutes; an hour-old clock setting or calibration request is stale."""
    poll_interval_s: float = Field(1.0, gt=0, le=60)
    """SQLite store (no LISTEN/NOTIFY): how often new commands are looked for. One indexed
    query a second is nothing; commands then leave within about a second."""
    sweep_interval_s: float = Field(30.0, gt=0)
    """PostgreSQL: how often expired commands are marked and queued commands are looked for
    without a notification (one lost while the LISTEN connection was down)."""
    abandoned_after_s: float = Field(300.0, gt=0)
    """A command left sent or acknowledged this long past its deadline belongs to a worker
    that died (its own timers settle it well before); any worker then marks it failed
    (``abandoned``)."""
    answer_packets_max: int = Field(50, ge=1)
    """Answer packets kept in a command's ``answer`` (a 3020 read may return several);
    history fetches keep counts only, their data goes to the value tables."""
    answer_time_requests: bool = True
    """Answer a device's 1013 (time-calibration request) with a 1012, as the standard asks
    (protocol.md 6.3 item 5); its 9013 is sent either way."""
    clock_skew_fix: bool = True
    """Send a 1012 on its own to a device whose clock is off (the off switch for the
    settings below; the skew is measured and exported either way)."""
    clock_skew_threshold_s: float = Field(60.0, gt=0)
    """Skew beyond which a clock counts as wrong. Below a minute a skew cannot move a value
    into another minute slot, and a resent upload (same QN, 10-30 s later) cannot look like
    one."""
    clock_skew_packets: int = Field(5, ge=1)
    """Real-time uploads in a row, each beyond the threshold and agreeing with each other
    within ``clock_skew_spread_s``, before a 1012 is sent: a few minutes of evidence at the
    usual 30-60 s interval, and a burst of replayed old packets never agrees with itself."""
    clock_skew_spread_s: float = Field(30.0, gt=0)
    """How far the skews of those uploads may differ: a drifting clock gives the same skew
    each time (plus network delay); replayed uploads give skews that grow by an interval
    with each packet."""
    clock_skew_period_s: float = Field(21_600.0, gt=0)
    """At most one automatic 1012 per device per this period (6 h): a clock that is wrong
    again within hours is being reset by something else, and repeating does not help."""
    clock_skew_tries: int = Field(3, ge=1)
    """Automatic 1012s that got no answer at all, in a row, after which the device is left
    alone (an answered 1012, automatic or not, starts the count again)."""
    realtime_window_s: float = Field(300.0, gt=0)
    """An upload counts as real-time (and measures the clock) only when its QN, the time it
    was sent by the device's clock, is within this of its DataTime (without a QN: DataTime
    within this of receipt). Backfilled history carries old DataTimes and is never used."""


class Settings(BaseSettings):
    """The root: one attribute per section."""

    model_config = SettingsConfigDict(
        env_prefix="HJ212_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        hide_input_in_errors=True,
    )

    listen: ListenConfig = ListenConfig()
    protocol: ProtocolConfig = ProtocolConfig()
    ack: AckConfig = AckConfig()
    storage: StorageConfig = StorageConfig()
    auth: AuthConfig = AuthConfig()
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()
    forward: ForwardConfig = ForwardConfig()
    shutdown: ShutdownConfig = ShutdownConfig()
    commands: CommandsConfig = CommandsConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        """Bounds that depend on each other, and names that must resolve, checked here so
        ``check-config`` catches them (not the first connection, or the start)."""
        if self.listen.max_buffer_bytes <= self.protocol.max_frame_bytes:
            raise ValueError(
                "listen.max_buffer_bytes must be larger than protocol.max_frame_bytes "
                f"({self.listen.max_buffer_bytes} <= {self.protocol.max_frame_bytes}): a "
                "connection's buffer must hold the largest frame"
            )
        try:
            ZoneInfo(self.protocol.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"protocol.timezone: unknown time zone {self.protocol.timezone!r}"
            ) from exc
        return self

    @model_validator(mode="after")
    def _no_forward_loop(self) -> Settings:
        """An upstream that is this gateway's own listener would feed it its own frames
        forever (field-quirks Q23). Names resolving to it are checked again at start."""
        listen = self.listen
        for up in self.forward.upstreams:
            host = up.host.strip("[]").lower()
            if up.port == listen.port and (host in _LOCAL_HOSTS or host == listen.host.lower()):
                raise ValueError(
                    f"forward.upstreams: {up.name} ({up.host}:{up.port}) is this gateway's "
                    "own listener"
                )
        return self
