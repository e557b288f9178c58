"""The storage contract: what the gateway hands to a store, and what a store promises.

A ``Store`` (PostgreSQL in production, SQLite by default) writes ``Entry`` batches, each
batch in one transaction: when ``write`` returns, every row of the batch is durable.
The gateway replies to a device only after that (design.md section 2).

Times cross this boundary as integers: microseconds since 1970-01-01 UTC. Converting a
device's ``DataTime`` once per packet (not once per row) and letting the driver encode
integers is the cheapest path measured (performance.md section 4: 2.6 -> 0.8 us/row).

storage/ never sees a socket and never imports prometheus: stores expose ``StoreStats``
snapshots that gateway/ turns into metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol


class FrameRow(NamedTuple):
    """One row of ``hj212.frame``: every frame, accepted or rejected, exactly as received."""

    received_at_us: int
    peer: str
    worker: int
    mn: str | None
    st: str | None
    cn: str | None
    qn: str | None
    ok: bool
    reason: str | None
    quirks: tuple[str, ...]
    raw: bytes


class ReadingRow(NamedTuple):
    """One row of ``hj212.reading``, key (mn, cn, data_time, code)."""

    data_time_us: int
    mn: str
    cn: int
    code: str
    code_2017: str | None
    rtd: float | None
    avg: float | None
    min: float | None
    max: float | None
    cou: float | None
    zs_rtd: float | None
    zs_avg: float | None
    zs_min: float | None
    zs_max: float | None
    flag: str | None
    eflag: str | None
    sample_time_us: int | None
    extra: str | None
    """JSON object text of the fields without a column (raw text), or None."""
    raw: str
    """The code's fields exactly as received, ``Field=value`` joined by ``,`` (field-quirks Q24)."""
    received_at_us: int


class InfoRow(NamedTuple):
    """One row of ``hj212.info`` (``iXXXXX-Info`` items).

    Key (mn, cn, data_time, pol_id, info_code).
    """

    data_time_us: int
    mn: str
    cn: int
    pol_id: str
    """``PolId`` of the packet, or '' when absent (a key column cannot be null)."""
    info_code: str
    value_text: str
    value_num: float | None
    received_at_us: int


class StatusRow(NamedTuple):
    """One row of ``hj212.device_status``, key (mn, cn, data_time, device, field)."""

    data_time_us: int
    mn: str
    cn: int
    device: str
    """``SB1``; or '' for packet-level fields such as ``RestartTime``."""
    field: str
    """``RS``, ``RT``, ``RestartTime``."""
    value_text: str
    value_num: float | None
    received_at_us: int


class PresenceRow(NamedTuple):
    """One row of ``hj212.presence`` (upserted; counters are added, not replaced)."""

    mn: str
    first_seen_us: int
    last_seen_us: int
    last_data_time_us: int | None
    peer: str
    worker: int
    version: str
    frames: int
    """Frames since the previous presence write for this MN (added to the stored count)."""
    rejects: int


class DeviceAuth(NamedTuple):
    """What the gateway needs of a registry row to admit a device's frames."""

    mn: str
    password: str | None
    """None: no password on record; the first one the device sends is recorded."""
    enabled: bool
    profile: str | None
    """Code-table profile name; None: chosen from the frame's version bits."""
    crc_variants: tuple[str, ...]
    """CRC algorithms accepted for this device beyond the configured default."""


# Registry columns an operator may set through the device commands.
DEVICE_FIELDS: tuple[str, ...] = (
    "password",
    "enabled",
    "profile",
    "crc_variants",
    "unit_name",
    "city",
    "county",
    "park",
    "outlet_type",
    "rtd_interval_s",
    "minute_interval_s",
)


class ForwardTo(NamedTuple):
    """Upstream platforms a frame is forwarded to (``forward`` settings): the store queues
    it in the outbox for each, in the transaction that stores the frame."""

    upstreams: tuple[str, ...]
    """Names from ``forward.upstreams``."""
    confirm: bool
    """The frame asks for a reply (Flag bit A, with a QN): it counts as delivered once the
    upstream's 9014 for it arrives; otherwise once it is written to the connection."""


@dataclass(slots=True)
class Entry:
    """What one received frame contributes to a batch.

    ``readings``/``infos``/``statuses`` are empty for rejected frames and for frames that
    carry no values (heartbeats, 9011/9012 answers).
    """

    frame: FrameRow | None
    """None only when values are stored for a frame archived earlier (quarantine approval)."""
    readings: Sequence[ReadingRow] = ()
    infos: Sequence[InfoRow] = ()
    statuses: Sequence[StatusRow] = ()
    forward: ForwardTo | None = None
    """Queue ``frame`` for these upstreams (never set without a frame)."""

    @property
    def row_count(self) -> int:
        framed = 0 if self.frame is None else 1
        queued = 0 if self.forward is None else len(self.forward.upstreams)
        return framed + len(self.readings) + len(self.infos) + len(self.statuses) + queued


@dataclass(slots=True)
class StoreStats:
    """Counters a store keeps; the gateway exports them as metrics at scrape time."""

    rows_written: dict[str, int] = field(default_factory=dict)
    """table -> rows inserted or updated."""
    rows_revised: int = 0
    """Rows whose values changed on a resend (revision incremented)."""
    duplicates: int = 0
    """Rows that arrived again with the same values (no change)."""
    batches_copy: int = 0
    """Batches written on the plain COPY path."""
    batches_upsert: int = 0
    """Batches written on the idempotent path."""
    write_errors: dict[str, int] = field(default_factory=dict)
    """error kind -> count."""
    fallbacks: int = 0
    """Batches sent by plain COPY that met an existing key and were redone by upsert."""


class StorageError(Exception):
    """A failed store operation. ``retriable`` says whether trying again may succeed."""

    def __init__(self, message: str, *, retriable: bool, kind: str = "other") -> None:
        super().__init__(message)
        self.retriable = retriable
        self.kind = kind


class Store(Protocol):
    """What every backend provides. All methods may raise ``StorageError``."""

    kind: str
    """``postgres`` or ``sqlite``."""

    async def open(self) -> None:
        """Connect (and create the file, for SQLite). Does not migrate."""

    async def migrate(self) -> list[str]:
        """Apply pending migrations; return the names applied (idempotent)."""

    async def write(self, entries: Sequence[Entry]) -> None:
        """Write every row of ``entries`` in one transaction; durable when this returns."""

    async def write_presence(self, rows: Sequence[PresenceRow]) -> None:
        """Upsert presence rows (one per MN)."""

    async def ping(self) -> bool:
        """True when the database answers now."""

    async def fetch_frames(
        self, *, mn: str | None, since_us: int | None, limit: int
    ) -> list[tuple[int, bytes]]:
        """Archived accepted frames (received_at_us, raw) in receive order, for replay."""

    async def maintain(self) -> list[str]:
        """Run retention/compression/partition jobs in the foreground; describe what ran."""

    def stats(self) -> StoreStats:
        """A snapshot of the counters."""

    async def load_devices(self) -> list[DeviceAuth]:
        """Every registry row, for admitting frames (auth policies ``registry``/``quarantine``)."""

    async def record_password(self, mn: str, password: str) -> bool:
        """Record ``password`` for a registered device that has none; True if recorded."""

    async def upsert_device(self, mn: str, values: dict[str, object]) -> bool:
        """Create or update a registry row (keys from ``DEVICE_FIELDS``); True if created."""

    async def get_device(self, mn: str) -> dict[str, object] | None:
        """One registry row without its password (``has_password`` instead), or None."""

    async def quarantined(self, mn: str) -> list[tuple[int, bytes]]:
        """Quarantined frames of ``mn`` (received_at_us, raw), oldest first."""

    async def release_quarantine(self, mn: str) -> int:
        """Mark the quarantined frames of ``mn`` approved; return how many."""

    async def close(self) -> None:
        """Release connections."""
