"""Cutting a TCP byte stream into HJ 212 frames: ``FrameBuffer``.

Theory of operation
-------------------
A frame is ``## LLLL segment CCCC CR LF`` (protocol.md 1.1): a 4-digit decimal length of
the segment in bytes, the segment, 4 hex digits of its CRC, and CR LF. The buffer holds at
most one incomplete frame; everything before the next ``##`` is garbage.

For each ``##`` the framer tries, in this order:

1. **Fast path** (nearly every frame): the length is right, CR LF sits where the length
   says, the CRC text is upper-case and matches. One CRC, two slices, done.
2. **Canonical path**: CR LF sits where the length says but something else is off (lower
   case CRC, a CRC variant, a segment over 1,024 bytes). The declared length is trusted:
   either the frame is accepted (with quirks) or rejected as exactly that many bytes.
3. **Tail search** (field-quirks Q2, Q4, protocol.md 1.3-1.5): the declared length does
   not lead to CR LF. Candidate ends are the CR / LF bytes after the length field (at most
   ``max_tail_candidates`` of them) and, failing those, the next ``##`` (tail missing) or
   the end of input. A candidate is accepted when 1-4 hex digits follow a closing ``&&``
   and match the CRC of what precedes them. Lenient paths are recorded in ``Frame.quirks``.
4. **Rejection**: when no candidate matches and the frame cannot grow any more (the next
   ``##`` arrived, the search window is full, or the input ended), the bad frame is
   rejected up to its first tail (or the next ``##``), never further: its neighbours are
   always intact.

Bytes that are not part of a frame come out as ``Rejected(GARBAGE)`` (or
``BAD_LENGTH_FIELD`` when they start with ``##`` but no 4-digit length follows), one
record per run of skipped bytes, carrying a bounded excerpt and the number of bytes
skipped (``consumed``). A lone trailing ``#`` is kept: it may start the next ``##``.

The result does not depend on how the stream is chunked, with one documented exception:
a frame whose text contains ``##`` and arrives in pieces may be cut at that ``##`` (a
following frame is more likely than ``##`` inside a value).

Strict mode (``lenient=False``) runs the same search but rejects every frame that needed a
quirk to be accepted, with the reason the quirk maps to (``_STRICT_REASON``).

Bounds: the buffer never holds more than one incomplete frame (at most ``max_frame_bytes``)
and never more than ``max_buffer_bytes`` whatever ``feed`` is given.
"""

from __future__ import annotations

from typing import Final

from protocol.crc import hj212_crc, hj212_crc_units, modbus_crc, swap16
from protocol.errors import ProtocolError, Quirk, RejectReason
from protocol.records import CrcVariant, Frame, Rejected, new_frame

__all__ = [
    "DEFAULT_EXCERPT_BYTES",
    "DEFAULT_GARBAGE_REPORT_BYTES",
    "DEFAULT_MAX_BUFFER_BYTES",
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_MAX_TAIL_CANDIDATES",
    "DEFAULT_TAIL_SEARCH_BYTES",
    "STANDARD_MAX_SEGMENT",
    "FrameBuffer",
    "reframe",
]

# The standard's cap on the data segment (HJ 212-2017 Table 2: 0 <= n <= 1024). Longer
# segments are real (1,025 and 1,623 bytes in field captures, field-quirks Q5): accepted
# with Quirk.OVERSIZE in lenient mode, rejected as TOO_LONG in strict mode.
STANDARD_MAX_SEGMENT: Final = 1024
# Envelope around the segment: "##" + 4-digit length + 4 CRC digits + CR LF.
_ENVELOPE: Final = 12
# Largest frame the 4-digit length can describe (9,999-byte segment + envelope = 10,011),
# rounded up a little; anything longer is a DoS attempt or a broken stream (Q5).
DEFAULT_MAX_FRAME_BYTES: Final = 10_012
# Per-connection buffer cap. Must exceed max_frame_bytes; 64 KiB is what one TCP read of
# asyncio hands over at most, so a whole read always fits next to a partial frame.
DEFAULT_MAX_BUFFER_BYTES: Final = 65_536
# How far past the length field the framer looks for a tail when the declared length is
# wrong (Q4, protocol.md 1.5 suggests ~10 kB). 4 KiB covers the largest segments seen in
# the field (1,623 bytes, Q5) with room to spare; the declared frame is always waited for
# in full, so this only bounds the repair of wrong lengths. Smaller windows declare a
# stream without tails bad sooner.
DEFAULT_TAIL_SEARCH_BYTES: Final = 4096
# CR/LF bytes tried as the end of one frame before giving up. Real frames have one tail
# (log text may add a line break or two); the bound stops input full of line breaks from
# costing one CRC per byte.
DEFAULT_MAX_TAIL_CANDIDATES: Final = 4
# A run of garbage is reported at least every this many bytes, so the gateway can count
# and cut off a connection that sends nothing but noise (field-quirks Q8: e.g. 64 KB
# without a frame) without the framer holding the bytes.
DEFAULT_GARBAGE_REPORT_BYTES: Final = 4096
# Bytes of skipped garbage kept in Rejected.raw: enough to recognise a Modbus probe or a
# modem banner, small enough to archive for every reject.
DEFAULT_EXCERPT_BYTES: Final = 64

_HASH: Final = 0x23  # "#"
_CR: Final = 0x0D
_LF: Final = 0x0A
_CRLF: Final = b"\r\n"
_HEX: Final = b"0123456789ABCDEFabcdef"
_LOWER_HEX: Final = frozenset(b"abcdef")
_HEX_SET: Final = frozenset(_HEX)
_AMP2: Final = b"&&"
_OVERSIZE: Final = (Quirk.OVERSIZE,)
# "%04X" of every 16-bit value: the fast path compares the CRC text with one lookup.
_HEX4: Final = tuple(b"%04X" % value for value in range(65536))

# Which reject reason a lenient-only path gets in strict mode; the first quirk of a frame
# found in this order decides (a malformed CRC field is the most specific).
_STRICT_REASON: Final[tuple[tuple[Quirk, RejectReason], ...]] = (
    (Quirk.CRC_SHORT, RejectReason.BAD_CRC_FIELD),
    (Quirk.CRC_LOWER, RejectReason.BAD_CRC_FIELD),
    (Quirk.OVERSIZE, RejectReason.TOO_LONG),
    (Quirk.LENGTH_REPAIRED, RejectReason.LENGTH_MISMATCH),
    (Quirk.LENGTH_CHARS, RejectReason.LENGTH_MISMATCH),
    (Quirk.TAIL_LF, RejectReason.LENGTH_MISMATCH),
    (Quirk.TAIL_MISSING, RejectReason.LENGTH_MISMATCH),
    (Quirk.CRC_UTF16, RejectReason.CRC_MISMATCH),
    (Quirk.GBK_TEXT, RejectReason.LENGTH_MISMATCH),
)


class _Match:
    """Outcome of checking one candidate segment + CRC text."""

    __slots__ = ("accepted", "other", "quirks", "variant")

    def __init__(
        self,
        variant: CrcVariant | None,
        quirks: list[Quirk],
        other: CrcVariant | None,
    ) -> None:
        self.variant = variant  # accepted variant, or None
        self.quirks = quirks
        self.other = other  # a variant that matched but is not accepted
        self.accepted = variant is not None


class _Scan:
    """Outcome of a tail search: a decided record, or what the first candidates showed."""

    __slots__ = ("first_at", "first_end", "other", "other_end", "record", "stop")

    def __init__(self) -> None:
        self.record: Frame | Rejected | None = None
        self.stop = -1
        self.first_end = -1  # end (after its tail) of the first candidate: a bad frame's extent
        self.first_at = -1  # where that candidate's tail starts
        self.other: CrcVariant | None = None  # a non-accepted variant that matched
        self.other_end = -1


class FrameBuffer:
    """Per-connection framer: ``feed`` bytes, get ``Frame`` and ``Rejected`` in stream order.

    Every bound is a keyword argument (see the ``DEFAULT_*`` constants for the reasons).
    Invalid bounds raise ``ValueError`` (a configuration error, not device input).
    """

    __slots__ = (
        "_accept",
        "_accept_hj",
        "_base",
        "_buf",
        "_excerpt_bytes",
        "_g_count",
        "_g_excerpt",
        "_g_offset",
        "_g_reason",
        "_garbage_report",
        "_lenient",
        "_max_buffer",
        "_max_candidates",
        "_max_frame",
        "_max_segment",
        "_tail_search",
    )

    def __init__(
        self,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
        lenient: bool = True,
        accept_variants: frozenset[CrcVariant] = frozenset({CrcVariant.HJ212}),
        tail_search_bytes: int = DEFAULT_TAIL_SEARCH_BYTES,
        max_tail_candidates: int = DEFAULT_MAX_TAIL_CANDIDATES,
        garbage_report_bytes: int = DEFAULT_GARBAGE_REPORT_BYTES,
        excerpt_bytes: int = DEFAULT_EXCERPT_BYTES,
    ) -> None:
        if max_frame_bytes < _ENVELOPE:
            raise ValueError(f"max_frame_bytes must be >= {_ENVELOPE}")
        if max_buffer_bytes <= max_frame_bytes:
            raise ValueError("max_buffer_bytes must be larger than max_frame_bytes")
        if tail_search_bytes < 1 or max_tail_candidates < 1:
            raise ValueError("tail_search_bytes and max_tail_candidates must be >= 1")
        if garbage_report_bytes < 1 or excerpt_bytes < 0:
            raise ValueError("garbage_report_bytes must be >= 1, excerpt_bytes >= 0")
        self._max_frame = max_frame_bytes
        self._max_segment = max_frame_bytes - _ENVELOPE
        self._max_buffer = max_buffer_bytes
        self._lenient = lenient
        self._accept = frozenset(accept_variants)
        self._accept_hj = CrcVariant.HJ212 in self._accept
        # The search window never reaches past one maximal frame.
        self._tail_search = min(tail_search_bytes, max_frame_bytes - 6)
        self._max_candidates = max_tail_candidates
        self._garbage_report = garbage_report_bytes
        self._excerpt_bytes = excerpt_bytes
        self._buf = bytearray()
        self._base = 0  # stream offset of _buf[0]
        self._g_count = 0  # pending run of skipped bytes
        self._g_offset = 0
        self._g_reason = RejectReason.GARBAGE
        self._g_excerpt = bytearray()

    # -- public API ---------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Bytes held (an incomplete frame, or a lone ``#``)."""
        return len(self._buf)

    @property
    def has_partial(self) -> bool:
        """A frame has started (``##`` seen) but not ended."""
        buf = self._buf
        return len(buf) >= 2 and buf[0] == _HASH and buf[1] == _HASH

    @property
    def pending_garbage(self) -> int:
        """Skipped bytes not yet reported (the run is reported when it ends)."""
        return self._g_count

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame | Rejected]:
        """Add bytes; return the frames and rejects they complete, in stream order."""
        out: list[Frame | Rejected] = []
        size = len(data)
        if not size:
            return out
        buf = self._buf
        if size <= self._max_buffer - len(buf):
            buf += data
            self._parse(out, final=False)
            return out
        # Larger than the room left: take it in slices so the buffer stays bounded.
        view = memoryview(data).cast("B")
        i = 0
        while i < size:
            room = self._max_buffer - len(buf)
            buf += view[i : i + room]
            i += room
            self._parse(out, final=False)
        return out

    def finish(self) -> list[Frame | Rejected]:
        """End of input (a file, a capture, one pasted line): a frame that ends at the very
        end without a tail is accepted (``tail_missing``), a partial one is TRUNCATED."""
        out: list[Frame | Rejected] = []
        self._parse(out, final=True)
        self._flush_garbage(out)
        return out

    def close(self) -> list[Rejected]:
        """End of stream (the peer closed): what is left is TRUNCATED or GARBAGE."""
        out: list[Rejected] = []
        buf = self._buf
        if self.has_partial:
            self._flush_garbage(out)
            out.append(self._truncated())
        elif buf:
            self._add_garbage(buf, 0, len(buf), RejectReason.GARBAGE, out)
            self._drop(len(buf))
        self._flush_garbage(out)
        return out

    def discard_partial(self) -> Rejected | None:
        """Drop an incomplete frame (the gateway's partial-frame timeout): TRUNCATED."""
        if not self.has_partial:
            return None
        return self._truncated()

    # -- internals ----------------------------------------------------------------------

    def _truncated(self) -> Rejected:
        buf = self._buf
        size = len(buf)
        rejected = Rejected(
            RejectReason.TRUNCATED,
            bytes(buf[: self._max_frame]),
            self._base,
            f"incomplete frame of {size} bytes",
            CrcVariant.NONE,
            size,
        )
        self._drop(size)
        return rejected

    def _drop(self, count: int) -> None:
        del self._buf[:count]
        self._base += count

    def _add_garbage(
        self,
        buf: bytearray,
        start: int,
        stop: int,
        reason: RejectReason,
        out: list[Frame | Rejected] | list[Rejected],
    ) -> None:
        # Append buf[start:stop] to the pending run; report it every garbage_report bytes
        # (at fixed positions of the run, so chunking cannot change the records).
        while start < stop:
            if self._g_count == 0:
                self._g_offset = self._base + start
                self._g_reason = reason
                self._g_excerpt = bytearray()
            take = min(stop - start, self._garbage_report - self._g_count)
            need = self._excerpt_bytes - len(self._g_excerpt)
            if need > 0:
                self._g_excerpt += buf[start : start + min(need, take)]
            self._g_count += take
            start += take
            if self._g_count >= self._garbage_report:
                self._flush_garbage(out)

    def _flush_garbage(self, out: list[Frame | Rejected] | list[Rejected]) -> None:
        count = self._g_count
        if not count:
            return
        what = (
            "bytes before a frame"
            if self._g_reason is RejectReason.GARBAGE
            else ("bytes after '##' without a 4-digit length")
        )
        out.append(
            Rejected(
                self._g_reason,
                bytes(self._g_excerpt),
                self._g_offset,
                f"{count} {what} skipped",
                CrcVariant.NONE,
                count,
            )
        )
        self._g_count = 0
        self._g_excerpt = bytearray()

    def _parse(self, out: list[Frame | Rejected], *, final: bool) -> None:
        buf = self._buf
        size = len(buf)
        pos = 0
        base = self._base
        fast = self._accept_hj
        # Oversize segments take the fast path only where they are accepted (lenient).
        fast_max = (
            self._max_segment if self._lenient else min(self._max_segment, STANDARD_MAX_SEGMENT)
        )
        hex4 = _HEX4
        while pos < size:
            if buf[pos] != _HASH or pos + 1 >= size or buf[pos + 1] != _HASH:
                nxt = buf.find(b"##", pos)
                if nxt < 0:
                    # Keep a lone trailing "#": it may be the first half of "##".
                    stop = size - 1 if (buf[size - 1] == _HASH and not final) else size
                    if stop > pos:
                        self._add_garbage(buf, pos, stop, RejectReason.GARBAGE, out)
                    pos = stop
                    break
                self._add_garbage(buf, pos, nxt, RejectReason.GARBAGE, out)
                pos = nxt
            # A "##" ends any run of garbage before it.
            if self._g_count:
                self._flush_garbage(out)
            # Fast path: length right, CR LF where it says, upper-case CRC that matches.
            if fast and pos + 6 <= size:
                length_field = buf[pos + 2 : pos + 6]
                if length_field.isdigit():
                    n = int(length_field)
                    end = pos + 6 + n
                    if (
                        end + 6 <= size
                        and n <= fast_max
                        and buf[end + 4] == _CR
                        and buf[end + 5] == _LF
                    ):
                        raw = bytes(buf[pos : end + 6])
                        segment = raw[6:-6]
                        if raw[-6:-2] == hex4[hj212_crc(segment)]:
                            out.append(
                                new_frame(
                                    raw,
                                    segment,
                                    base + pos,
                                    CrcVariant.HJ212,
                                    () if n <= STANDARD_MAX_SEGMENT else _OVERSIZE,
                                )
                            )
                            pos = end + 6
                            continue
            result = self._frame_at(buf, pos, size, final)
            if result is None:
                break
            new_pos, record = result
            if record is None:
                # "##" without a length: start a BAD_LENGTH_FIELD run with its first "#";
                # the run continues like garbage up to the next "##".
                self._add_garbage(buf, pos, pos + 1, RejectReason.BAD_LENGTH_FIELD, out)
            else:
                out.append(record)
            pos = new_pos
        if pos:
            del buf[:pos]
            self._base += pos

    def _frame_at(
        self, buf: bytearray, pos: int, size: int, final: bool
    ) -> tuple[int, Frame | Rejected | None] | None:
        """The record starting at ``pos`` ("##"), its end, or None to wait for more."""
        if size - pos < 6:
            if final:
                return size, self._reject(buf, pos, size, RejectReason.TRUNCATED, "input ended")
            return None
        length_field = buf[pos + 2 : pos + 6]
        if not (length_field.isdigit()):
            return pos + 1, None
        return self._slow(buf, pos, size, int(length_field), final)

    def _slow(
        self, buf: bytearray, pos: int, size: int, n: int, final: bool
    ) -> tuple[int, Frame | Rejected | None] | None:
        seg0 = pos + 6
        end = seg0 + n
        declared_fits = n <= self._max_segment
        # How far this frame may reach: the declared frame, or the tail-search window.
        horizon = seg0 + self._tail_search
        if declared_fits:
            horizon = max(horizon, end + 6)
        limit = min(size, horizon)
        nxt = buf.find(b"##", seg0, limit)
        region_end = nxt if nxt >= 0 else limit

        # 2. Canonical: CR LF where the declared length says, no "##" inside.
        if (
            declared_fits
            and end + 6 <= size
            and buf[end + 4 : end + 6] == _CRLF
            and (nxt < 0 or nxt >= end + 4)
        ):
            field = bytes(buf[end : end + 4])
            match: _Match | None = None
            if _is_hex(field):
                match = self._match(bytes(buf[seg0:end]), field, n, 2)
                if match.accepted:
                    return end + 6, self._accept_frame(
                        buf, pos, seg0, end, stop=end + 6, match=match
                    )
            # A tail inside the declared segment may end the real frame (fed in pieces,
            # that frame would have been accepted before the declared end arrived).
            scan = self._tails(buf, pos, seg0, end + 4, size=size, n=n, final=final)
            if scan is not None and scan.record is not None:
                return scan.stop, scan.record
            if match is None:
                return end + 6, self._reject(buf, pos, end + 6, RejectReason.BAD_CRC_FIELD)
            return end + 6, self._reject(
                buf, pos, end + 6, RejectReason.CRC_MISMATCH, variant=match.other
            )

        # 3. Tail search: CR/LF candidates up to the next "##", then the "##" itself.
        scan = self._tails(buf, pos, seg0, region_end, size=size, n=n, final=final)
        if scan is None:
            return None  # CR LF may be split between reads
        if scan.record is not None:
            return scan.stop, scan.record
        first_end, first_at = scan.first_end, scan.first_at
        other, other_end = scan.other, scan.other_end
        boundary = nxt if nxt >= 0 else (size if final and limit == size else -1)
        if boundary >= 0:
            found = self._candidate(buf, pos, seg0, at=boundary, stop=boundary, n=n, tail=0)
            if isinstance(found, Frame | Rejected):
                return boundary, found
            if found is not None and other is None:
                other, other_end = found, boundary

        # 4. Reject, once the frame cannot grow any more; else wait.
        exhausted = limit < size or (limit == horizon and size >= horizon)
        if not (nxt >= 0 or final or exhausted):
            return None
        if other is not None:
            return other_end, self._reject(
                buf, pos, other_end, RejectReason.CRC_MISMATCH, variant=other
            )
        if first_end >= 0:
            extent, tail_at = first_end, first_at
        elif nxt >= 0:
            extent, tail_at = nxt, nxt
        else:
            extent, tail_at = limit, -1
        if not declared_fits:
            reason = RejectReason.TOO_LONG
        elif tail_at == end + 4:
            # The tail is where the length says: the length is right, the CRC is not.
            field = bytes(buf[end:tail_at])
            reason = RejectReason.CRC_MISMATCH if _is_hex(field) else RejectReason.BAD_CRC_FIELD
        elif final and tail_at < 0:
            reason = RejectReason.TRUNCATED
        else:
            reason = RejectReason.LENGTH_MISMATCH
        return extent, self._reject(buf, pos, extent, reason, f"declared length {n}")

    def _tails(
        self,
        buf: bytearray,
        pos: int,
        seg0: int,
        region_end: int,
        *,
        size: int,
        n: int,
        final: bool,
    ) -> _Scan | None:
        """Try the CR/LF bytes in [seg0, region_end) as tails; None means wait for data."""
        scan = _Scan()
        i = seg0
        for _ in range(self._max_candidates):
            lf = buf.find(b"\n", i, region_end)
            cr = buf.find(b"\r", i, region_end)
            if cr >= 0 and (lf < 0 or cr < lf):
                at = cr
                if cr + 1 >= size:
                    if not final:
                        return None
                    tail = 1
                else:
                    tail = 2 if buf[cr + 1] == _LF else 1
            elif lf >= 0:
                at, tail = lf, 1
            else:
                break
            if scan.first_end < 0:
                scan.first_end, scan.first_at = at + tail, at
            found = self._candidate(buf, pos, seg0, at=at, stop=at + tail, n=n, tail=tail)
            if isinstance(found, Frame | Rejected):
                scan.record, scan.stop = found, at + tail
                return scan
            if found is not None and scan.other is None:
                scan.other, scan.other_end = found, at + tail
            i = at + tail
        return scan

    def _candidate(
        self,
        buf: bytearray,
        pos: int,
        seg0: int,
        *,
        at: int,
        stop: int,
        n: int,
        tail: int,
    ) -> Frame | Rejected | CrcVariant | None:
        """Check the frame ending with a tail at ``at``: 1-4 hex digits right after "&&".

        Returns the record when the frame is decided (accepted, or rejected in strict
        mode), a non-accepted variant that matched, or None.
        """
        k = 0
        while k < 5 and at - k - 1 >= seg0 and buf[at - k - 1] in _HEX_SET:
            k += 1
        if not 1 <= k <= 4:
            return None
        crc_at = at - k
        if crc_at - seg0 < 2 or buf[crc_at - 2 : crc_at] != _AMP2:
            return None
        if crc_at - seg0 > self._max_segment:
            return None
        match = self._match(bytes(buf[seg0:crc_at]), bytes(buf[crc_at:at]), n, tail)
        if match.accepted:
            return self._accept_frame(buf, pos, seg0, crc_at, stop=stop, match=match)
        return match.other

    def _match(self, segment: bytes, field: bytes, n: int, tail: int) -> _Match:
        """Which accepted variant (if any) gives CRC text ``field`` for ``segment``."""
        value = int(field, 16)
        quirks: list[Quirk] = []
        variant: CrcVariant | None = None
        if hj212_crc(segment) == value:
            variant = CrcVariant.HJ212
        text: str | None = None
        gbk = False
        if not segment.isascii():
            try:
                text = segment.decode("utf-8")
            except UnicodeDecodeError:
                try:
                    text = segment.decode("gb18030")
                    gbk = True
                except UnicodeDecodeError:
                    text = None
            if variant is None and text is not None and hj212_crc_units(text) == value:
                variant = CrcVariant.HJ212
                quirks.append(Quirk.CRC_UTF16)
        if variant is None:
            m = modbus_crc(segment)
            if m == value:
                variant = CrcVariant.MODBUS
            elif swap16(m) == value:
                variant = CrcVariant.MODBUS_SWAPPED
        if variant is None:
            return _Match(None, quirks, None)
        if variant not in self._accept:
            return _Match(None, quirks, variant)
        if len(field) < 4:
            quirks.append(Quirk.CRC_SHORT)
        if _LOWER_HEX.intersection(field):
            quirks.append(Quirk.CRC_LOWER)
        size = len(segment)
        if size != n:
            if text is not None and len(text) == n:
                quirks.append(Quirk.LENGTH_CHARS)
                if gbk:
                    quirks.append(Quirk.GBK_TEXT)
            else:
                quirks.append(Quirk.LENGTH_REPAIRED)
        if size > STANDARD_MAX_SEGMENT:
            quirks.append(Quirk.OVERSIZE)
        if tail == 1:
            quirks.append(Quirk.TAIL_LF)
        elif tail == 0:
            quirks.append(Quirk.TAIL_MISSING)
        return _Match(variant, quirks, None)

    def _accept_frame(
        self,
        buf: bytearray,
        pos: int,
        seg0: int,
        seg_end: int,
        *,
        stop: int,
        match: _Match,
    ) -> Frame | Rejected:
        assert match.variant is not None
        quirks = match.quirks
        if quirks and not self._lenient:
            for quirk, reason in _STRICT_REASON:
                if quirk in quirks:
                    return self._reject(buf, pos, stop, reason, f"strict mode: {quirk.value}")
        return Frame(
            bytes(buf[pos:stop]),
            bytes(buf[seg0:seg_end]),
            self._base + pos,
            match.variant,
            tuple(quirks),
        )

    def _reject(
        self,
        buf: bytearray,
        pos: int,
        stop: int,
        reason: RejectReason,
        detail: str = "",
        *,
        variant: CrcVariant | None = None,
    ) -> Rejected:
        return Rejected(
            reason,
            bytes(buf[pos:stop]),
            self._base + pos,
            detail,
            variant if variant is not None else CrcVariant.NONE,
            stop - pos,
        )


def _is_hex(field: bytes) -> bool:
    return bool(field) and not field.translate(None, _HEX)


def reframe(rejected: Rejected) -> Frame:
    """A ``Rejected(CRC_MISMATCH)`` whose CRC matched a non-accepted variant, as a ``Frame``.

    The gateway calls this when the device's registry entry allows that variant
    (field-quirks Q3). Raises ``ProtocolError(CRC_MISMATCH)`` when the record does not
    hold exactly one frame that matches its variant.
    """
    variant = rejected.crc_variant
    if rejected.reason is not RejectReason.CRC_MISMATCH or variant is CrcVariant.NONE:
        raise ProtocolError(RejectReason.CRC_MISMATCH, "no matching CRC variant to accept")
    raw = rejected.raw
    framer = FrameBuffer(
        max_frame_bytes=max(DEFAULT_MAX_FRAME_BYTES, len(raw) + _ENVELOPE),
        max_buffer_bytes=max(DEFAULT_MAX_BUFFER_BYTES, 2 * len(raw) + 2 * _ENVELOPE),
        accept_variants=frozenset({variant}),
    )
    records = [*framer.feed(raw), *framer.finish()]
    frames = [r for r in records if isinstance(r, Frame)]
    if len(records) != 1 or len(frames) != 1:
        raise ProtocolError(RejectReason.CRC_MISMATCH, "not a single frame")
    frame = frames[0]
    return Frame(frame.raw, frame.segment, rejected.offset, frame.crc_variant, frame.quirks)
