"""Settings of hj212-gateway: one frozen tree of sections, validated once at start.

Precedence (design.md section 5): CLI flags > environment (``HJ212_`` prefix, ``__``
between section and key) > TOML file (``--config``) > the defaults below.

Every bound the gateway enforces is a field here with the reason for its default. The
sections are plain ``BaseModel``s under one ``BaseSettings`` root (nested
``BaseSettings`` do not read the parent's sources). config/ imports nothing of ours.
"""

from __future__ import annotations

from typing import Literal

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
    """A peer that does not read its replies is disconnected once this much is queued."""
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

    @model_validator(mode="after")
    def _water_marks(self) -> StorageConfig:
        if self.low_water >= self.high_water:
            raise ValueError("storage.low_water must be below storage.high_water")
        if self.pool_max < self.pool_min:
            raise ValueError("storage.pool_max must be >= storage.pool_min")
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


class ForwardConfig(_Section):
    """Upstream platforms (not yet wired)."""

    upstreams: tuple[dict[str, str], ...] = ()


class ShutdownConfig(_Section):
    drain_timeout_s: float = Field(10.0, gt=0)
    """On SIGTERM, queued rows get this long to reach the database; what is left is
    counted and logged, and its replies were never sent, so devices resend it."""


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
