"""Per-upstream rewrites of a frame: the device password and the Flag version bits.

By default a frame is relayed exactly as received. An upstream that assigns its own
passwords or expects one protocol version gets a rebuilt frame: the header is rebuilt by
the protocol encoder (``build_segment`` + ``encode_frame``: length, CRC and tail computed,
never patched) around the data area copied byte for byte, so values keep their text
(``1.230`` stays ``1.230``, field-quirks Q24). The result is then framed and decoded again
in strict mode and compared with the original, field by field; a frame that does not come
back identical but for the rewritten fields is refused, never sent (field-quirks Q23: a
relay that cut the CRC and kept the old length corrupted every frame it forwarded).
"""

from __future__ import annotations

from typing import Final

from config.settings import RewriteConfig
from protocol import CrcVariant, Frame, FrameBuffer, Packet, ProtocolError, build_segment, decode
from protocol.encode import VERSION_BITS, encode_frame

__all__ = ["RewriteError", "Rewriter"]

# Header fields the rebuilt header carries; a frame with any other is refused rather than
# relayed without it.
_HEADER_FIELDS: Final = frozenset({"QN", "ST", "CN", "PW", "MN", "Flag", "PNUM", "PNO"})
_CP_OPEN: Final = b"CP=&&"
_CP_CLOSE: Final = b"&&"
# Frames stored by the gateway were accepted under some CRC algorithm (a device may be
# allowed a non-standard one); the rebuilt frame always carries the standard CRC.
_ANY_VARIANT: Final = frozenset(CrcVariant) - {CrcVariant.NONE}


class RewriteError(Exception):
    """The frame cannot be rewritten safely (it is not sent)."""


def _one_frame(raw: bytes, *, lenient: bool) -> Frame:
    variants = _ANY_VARIANT if lenient else frozenset({CrcVariant.HJ212})
    framer = FrameBuffer(lenient=lenient, accept_variants=variants)
    found = framer.feed(raw) + framer.close()
    frames = [f for f in found if type(f) is Frame]
    if len(frames) != 1 or len(found) != 1:
        raise RewriteError("not exactly one valid frame")
    return frames[0]


def _data_area(segment: bytes) -> bytes:
    start = segment.find(_CP_OPEN)
    end = segment.rfind(_CP_CLOSE)
    if start < 0 or end < start + len(_CP_OPEN):
        raise RewriteError("no CP=&&...&& data area")
    return segment[start + len(_CP_OPEN) : end]


class Rewriter:
    """``rewriter(raw) -> bytes``: the frame an upstream receives (``raw`` unchanged when
    nothing applies to it). Raises ``RewriteError``."""

    def __init__(self, cfg: RewriteConfig) -> None:
        self._passwords = {mn: pw.get_secret_value() for mn, pw in cfg.passwords.items()}
        self._password = None if cfg.password is None else cfg.password.get_secret_value()
        self._version_bits = None if cfg.flag_version is None else VERSION_BITS[cfg.flag_version]

    def __call__(self, raw: bytes) -> bytes:
        try:
            frame = _one_frame(raw, lenient=True)
            packet = decode(frame)
        except ProtocolError as exc:
            raise RewriteError(f"the stored frame does not decode: {exc}") from exc
        pw = self._passwords.get(packet.mn, self._password)
        if pw is None:
            pw = packet.pw
        flag = packet.flag
        if self._version_bits is not None:
            flag = (self._version_bits << 2) | ((flag or 0) & 0b11)
        if pw == packet.pw and flag == packet.flag:
            return raw
        extra = set(packet.header) - _HEADER_FIELDS
        if extra:
            raise RewriteError(f"header fields the encoder does not carry: {sorted(extra)}")
        area = _data_area(frame.segment)
        try:
            text = area.decode("utf-8")
            segment = build_segment(
                qn=packet.qn,
                st=packet.st,
                cn=packet.cn,
                pw=pw,
                mn=packet.mn,
                flag=flag,
                cp=text,
                pnum=packet.pnum,
                pno=packet.pno,
            )
            out = encode_frame(segment)
        except (UnicodeDecodeError, ProtocolError) as exc:
            raise RewriteError(f"cannot encode: {exc}") from exc
        _check(out, packet, area, pw, flag)
        return out


def _check(out: bytes, original: Packet, area: bytes, pw: str | None, flag: int | None) -> None:
    """Frame and decode ``out`` again, strictly, and compare it with ``original``."""
    try:
        frame = _one_frame(out, lenient=False)
        again = decode(frame, lenient=False)
    except (ProtocolError, RewriteError) as exc:
        raise RewriteError(f"the rewritten frame does not check: {exc}") from exc
    if frame.raw != out or frame.crc_variant is not CrcVariant.HJ212:
        raise RewriteError("the rewritten frame's CRC or length does not check")
    if _data_area(frame.segment) != area:
        raise RewriteError("the data area changed")
    same = (
        again.mn == original.mn
        and again.qn == original.qn
        and again.st == original.st
        and again.cn == original.cn
        and again.pnum == original.pnum
        and again.pno == original.pno
        and again.cp == original.cp
        and again.data == original.data
        and again.pw == pw
        and again.flag == flag
    )
    if not same:
        raise RewriteError("the rewritten frame decodes differently")
