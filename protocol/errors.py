"""The one error type of protocol/, and the two enums that label what the parser saw.

Everything a device can send ends as a frame, a ``Rejected`` record, or a
``ProtocolError`` carrying a ``RejectReason``. Nothing else may escape the
protocol package whatever the input (the fuzz tests hold that line).

Both enums are bounded on purpose: their values are used as Prometheus label
values (``reason``, ``quirk``) and are listed in the README. Add a member only
with a README line.
"""

from __future__ import annotations

from enum import Enum


class RejectReason(str, Enum):  # noqa: UP042 - str() must stay the member name for callers
    """Why a frame (or a run of bytes) was not accepted."""

    GARBAGE = "garbage"
    """Bytes before or between frames that do not start with ``##`` (skipped to resync)."""
    BAD_LENGTH_FIELD = "bad_length_field"
    """The 4 characters after ``##`` are not decimal digits."""
    TOO_LONG = "too_long"
    """The declared length, or the bytes searched for a tail, exceed the configured cap."""
    LENGTH_MISMATCH = "length_mismatch"
    """The declared length does not reach a CRC + tail, and no lenient repair matched."""
    BAD_CRC_FIELD = "bad_crc_field"
    """The characters in the CRC position are not 1 to 4 hex digits."""
    CRC_MISMATCH = "crc_mismatch"
    """The CRC does not match under any accepted variant (a non-accepted one may have matched)."""
    TRUNCATED = "truncated"
    """The stream ended, or the buffer bound was hit, in the middle of a frame."""
    BAD_SEGMENT = "bad_segment"
    """The data segment has no ``CP=&&...&&`` part or a header field without ``=``."""
    BAD_FLAG = "bad_flag"
    """``Flag`` is present but not an integer from 0 to 255."""
    BAD_PNUM = "bad_pnum"
    """``PNUM``/``PNO`` present but not small integers."""
    BAD_TIME = "bad_time"
    """``DataTime`` (or another time field) is not 14 or 17 digits forming a valid time."""
    MISSING_FIELD = "missing_field"
    """A required header field (``CN`` or ``MN``) is absent or empty."""
    BAD_ENCODING = "bad_encoding"
    """The segment is neither valid UTF-8 nor GBK text, or holds a NUL byte."""
    BAD_CN = "bad_cn"
    """``CN`` is not a command code of 1 to 4 decimal digits."""


class Quirk(str, Enum):  # noqa: UP042 - str() must stay the member name for callers
    """A deviation from the standard that was accepted (lenient mode) and recorded."""

    CRC_LOWER = "crc_lower"
    """CRC written with lower-case hex digits (field-quirks Q1)."""
    CRC_SHORT = "crc_short"
    """CRC written with fewer than 4 hex digits (Q2)."""
    LENGTH_REPAIRED = "length_repaired"
    """Declared length wrong; frame found by its tail instead (Q4)."""
    LENGTH_CHARS = "length_chars"
    """Declared length counts characters, not bytes (protocol.md 1.3)."""
    OVERSIZE = "oversize"
    """Data segment longer than the standard's 1024 bytes (Q5)."""
    TAIL_LF = "tail_lf"
    """Frame ended by a bare LF (or bare CR) instead of CR LF (protocol.md 1.5)."""
    TAIL_MISSING = "tail_missing"
    """Frame followed directly by the next ``##`` or the end of input, no tail."""
    MISSING_QN = "missing_qn"
    """No ``QN`` field (2005 style, Q10)."""
    MISSING_FLAG = "missing_flag"
    """No ``Flag`` field (2005 style, Q10); treated as Flag 0."""
    UNKNOWN_VERSION = "unknown_version"
    """Flag version bits other than 2005/2017/2025 (Q11)."""
    HEADER_COMMA = "header_comma"
    """``,`` used instead of ``;`` between header fields (protocol.md 3.3)."""
    HEADER_NO_SEMICOLON = "header_no_semicolon"
    """No ``;`` before ``CP=`` (``Flag=5CP=&&``, protocol.md 3.3)."""
    WHITESPACE = "whitespace"
    """Spaces around keys or values (protocol.md 3.3)."""
    EMPTY_ITEM = "empty_item"
    """Empty items or a trailing separator in CP (Q17)."""
    TIME_MS = "time_ms"
    """A 17-digit time with milliseconds (Q13)."""
    GBK_TEXT = "gbk_text"
    """Text decoded as GBK/GB18030 instead of UTF-8 (protocol.md 1.3)."""
    CRC_UTF16 = "crc_utf16"
    """CRC computed over UTF-16 code units instead of bytes (protocol.md 1.3)."""
    CODE_ALIAS_COLLISION = "code_alias_collision"
    """A 2005 code and its 2017 equivalent both present in one packet (Q14)."""
    MULTIPLE_DATATIME = "multiple_datatime"
    """Several ``DataTime`` items in one CP (protocol.md 3.2, defensive)."""
    KEY_CASE = "key_case"
    """A header or CP key matched only case-insensitively (``Ctime``/``CTime``)."""


class ProtocolError(Exception):
    """The only exception protocol/ raises. ``reason`` is machine-readable."""

    __slots__ = ("detail", "offset", "reason")

    def __init__(self, reason: RejectReason, detail: str = "", offset: int = -1) -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail
        self.offset = offset
