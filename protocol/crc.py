"""CRC checks of HJ 212 frames: the standard's algorithm and the variants devices really send.

Theory of operation (protocol.md section 2, performance.md section 2)
----------------------------------------------------------------------
The HJ 212 routine is ``reg = T[(reg >> 8) ^ b]`` per byte, where ``T`` is the usual
reflected CRC-16 (poly 0xA001) table, starting from 0xFFFF with no final XOR. After the
XOR the register is below 256, so only its high byte ``h`` carries state from one byte
to the next: ``h' = U[h ^ b]`` with ``U[x] = T[x] >> 8``, and the result is
``T[h ^ last_byte]``.

``T`` and ``U`` are linear over GF(2) and ``U`` composed with itself 8 times is the
identity. Unrolling the recurrence therefore gives::

    crc = T[ XOR_k U^k(b[n-1-k])  ^  U^(n-1)(0xFF) ]          (k = distance from the end)
        = XOR_r T[U^r(X_r)]  ^  T[U^((n-1) mod 8)(0xFF)]      (r = 0..7)

where ``X_r`` is the XOR of every byte whose distance from the end is r modulo 8. Reading
the segment as one big-endian integer puts the byte at distance k at bits 8k..8k+7, so
folding that integer onto 64 bits with a handful of shift/XORs yields all eight ``X_r`` at
once (lane r = bits 8r..8r+7). Four 64K-entry tables then map pairs of lanes straight to
their CRC contribution. A 350-byte segment costs a few microseconds instead of ~20 for the
table loop (benchmarks/protocol.py prints both).

The same structure means the check is weak: swapping two bytes 8 positions apart leaves it
unchanged. Treat "CRC ok" as protection against line noise only (field-quirks Q3).

Variants (field-quirks Q3, protocol.md 1.3): some devices send CRC-16/MODBUS (written high
byte first, or byte-swapped); some firmware computes the HJ 212 routine over UTF-16 code
units of the text instead of its bytes. Those are only tried when the standard check fails.
"""

from __future__ import annotations

from typing import Final

from protocol.records import CrcVariant

__all__ = [
    "hj212_crc",
    "hj212_crc_naive",
    "hj212_crc_units",
    "match_variant",
    "modbus_crc",
    "swap16",
]

_POLY: Final = 0xA001
_INIT: Final = 0xFFFF
_MASK64: Final = (1 << 64) - 1


def _reflected_entry(x: int) -> int:
    for _ in range(8):
        x = (x >> 1) ^ _POLY if x & 1 else x >> 1
    return x


# T: the 256-entry reflected CRC-16 table (also CRC-16/MODBUS's table).
_T: Final[tuple[int, ...]] = tuple(_reflected_entry(x) for x in range(256))
# U: how the carried high byte evolves; U^8 is the identity (checked in the tests).
_U: Final[tuple[int, ...]] = tuple(t >> 8 for t in _T)


def _u_power(k: int) -> tuple[int, ...]:
    table = list(range(256))
    for _ in range(k):
        table = [_U[x] for x in table]
    return tuple(table)


def _build_fold_tables() -> tuple[list[int], list[int], list[int], list[int], tuple[int, ...]]:
    # Lane r contributes T[U^r(X_r)]; pairs (2j, 2j+1) of lanes share one 64K table indexed
    # by the 16 bits (hi lane << 8 | lo lane).
    lane = [[_T[x] for x in _u_power(r)] for r in range(8)]
    # Interning through one list keeps 4 x 65,536 entries down to 65,536 int objects.
    ints = list(range(65536))
    pairs: list[list[int]] = []
    for j in range(4):
        lo, hi = lane[2 * j], lane[2 * j + 1]
        pairs.append([ints[a ^ b] for b in hi for a in lo])
    # The contribution of the 0xFFFF start: T[U^((n-1) mod 8)(0xFF)].
    start = tuple(_T[_u_power(r)[0xFF]] for r in range(8))
    return pairs[0], pairs[1], pairs[2], pairs[3], start


_F0, _F1, _F2, _F3, _START = _build_fold_tables()


def hj212_crc(data: bytes | bytearray | memoryview) -> int:
    """The HJ 212 CRC16 of ``data`` (protocol.md 2.1), as an int; ``b""`` gives 0xFFFF."""
    n = len(data)
    if n == 0:
        return _INIT
    v = int.from_bytes(data, "big")
    if n > 8:
        # Fold onto 64 bits: halve the width until 64 bits remain. After the step with
        # shift s the low s bits hold the correct fold; garbage above them never reaches
        # the low bits again, so one mask at the end is enough.
        width = 64
        while width < n * 8:
            width <<= 1
        while width > 64:
            width >>= 1
            v ^= v >> width
        v &= _MASK64
    return (
        _F0[v & 0xFFFF]
        ^ _F1[(v >> 16) & 0xFFFF]
        ^ _F2[(v >> 32) & 0xFFFF]
        ^ _F3[v >> 48]
        ^ _START[(n - 1) & 7]
    )


def hj212_crc_naive(data: bytes | bytearray | memoryview) -> int:
    """The standard's bit-by-bit routine (protocol.md 2.1); the reference for the tests."""
    reg = _INIT
    for b in bytes(data):
        reg = (reg >> 8) ^ b
        for _ in range(8):
            reg = (reg >> 1) ^ _POLY if reg & 1 else reg >> 1
    return reg


def hj212_crc_units(text: str) -> int:
    """The HJ 212 routine over UTF-16 code units instead of bytes (protocol.md 1.3).

    Some firmware computes the CRC over the characters of a UTF-16 string, so a CJK
    character XORs a value above 0xFF into the register. Only used for segments with
    non-ASCII bytes, after the byte check failed.
    """
    reg = _INIT
    raw = text.encode("utf-16-le", "surrogatepass")
    for i in range(0, len(raw), 2):
        reg = (reg >> 8) ^ (raw[i] | raw[i + 1] << 8)
        for _ in range(8):
            reg = (reg >> 1) ^ _POLY if reg & 1 else reg >> 1
    return reg


def modbus_crc(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/MODBUS of ``data`` (``b"123456789"`` gives 0x4B37). Only used on a mismatch."""
    reg = _INIT
    table = _T
    for b in bytes(data):
        reg = (reg >> 8) ^ table[(reg ^ b) & 0xFF]
    return reg


def swap16(value: int) -> int:
    """``value`` with its two bytes exchanged (the low-byte-first way of writing a CRC)."""
    return ((value & 0xFF) << 8) | (value >> 8)


def match_variant(segment: bytes | bytearray | memoryview, value: int) -> CrcVariant:
    """Which algorithm gives ``value`` for ``segment``: HJ212, MODBUS (high byte first as
    written), MODBUS_SWAPPED (low byte first), else NONE. Tried in that order."""
    if hj212_crc(segment) == value:
        return CrcVariant.HJ212
    m = modbus_crc(segment)
    if m == value:
        return CrcVariant.MODBUS
    if swap16(m) == value:
        return CrcVariant.MODBUS_SWAPPED
    return CrcVariant.NONE
