"""Keeping secrets out of logs: password masking and bounded, escaped excerpts."""

from __future__ import annotations

import re
from typing import Final

__all__ = ["excerpt", "mask_password"]

# PW (access password), NewPW (1072 set password) and SK / NewSK (2025 key management),
# in any letter case, with or without spaces before "=". The value runs to the next
# separator, so a broken frame (no separator after it) is masked to its end.
_SECRET: Final = re.compile(rb"((?:New)?(?:PW|SK)[ \t]*=)[^;,&\r\n]*", re.IGNORECASE)
_MASK: Final = rb"\1***"
_ESCAPES: Final = {"\r": "\\r", "\n": "\\n", "\t": "\\t", "\\": "\\\\"}


def mask_password(raw: bytes) -> bytes:
    """``raw`` with every password (and key) value replaced by ``***``."""
    return _SECRET.sub(_MASK, raw)


def excerpt(raw: bytes, limit: int = 160) -> str:
    """A masked, escaped, single-line excerpt of at most ``limit`` characters (``…`` marks
    a cut). Non-UTF-8 bytes and control characters are written as ``\\xNN``."""
    # surrogateescape keeps undecodable bytes as U+DC80..U+DCFF, written back as \\xNN.
    text = mask_password(bytes(raw)).decode("utf-8", "surrogateescape")
    pieces: list[str] = []
    used = 0
    cut = False
    for ch in text:
        piece = _ESCAPES.get(ch)
        if piece is None:
            code = ord(ch)
            if 0xDC80 <= code <= 0xDCFF:
                piece = f"\\x{code - 0xDC00:02x}"
            elif code < 0x20 or code == 0x7F:
                piece = f"\\x{code:02x}"
            else:
                piece = ch
        if used + len(piece) > limit:
            cut = True
            break
        pieces.append(piece)
        used += len(piece)
    if cut:
        while pieces and used + 1 > limit:
            used -= len(pieces.pop())
        pieces.append("…")
    return "".join(pieces)
