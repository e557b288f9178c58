"""Identifier checks of the roster: unified social credit codes and discharge permit numbers.

Unified social credit code (统一社会信用代码, GB 32100-2015): 18 characters from a
31-character set (digits and capital letters without I, O, S, V, Z):

    position 1      registration authority (9 = market regulation, 5 = civil affairs ...)
    position 2      organisation category
    positions 3-8   administrative division (GB/T 2260), e.g. 320116
    positions 9-17  organisation code (GB 11714)
    position 18     check character

The check character: each of the first 17 characters has a value (its index in the set)
and a weight 3**(i-1) mod 31 for position i; C18 = 31 - (sum mod 31), where 31 becomes 0,
and C18 is written as the set's character of that value.

Discharge permit number (排污许可证编号, the fixed-pollution-source code of HJ 608-2017):
22 characters, the unit's 18-character credit code, a 3-digit sequence number (one per
site of the unit: 001, 002 ...) and a capital letter (P for a permit). A permit number
therefore has to start with the credit code of its unit.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CREDIT_CODE_CHARS",
    "CREDIT_CODE_LENGTH",
    "PERMIT_NO_LENGTH",
    "credit_code_check_char",
    "credit_code_problem",
    "permit_no_problem",
]

CREDIT_CODE_CHARS: Final = "0123456789ABCDEFGHJKLMNPQRTUWXY"
"""GB 32100's character set in value order (0-30)."""
CREDIT_CODE_LENGTH: Final = 18
PERMIT_NO_LENGTH: Final = 22
_MODULUS: Final = 31
_WEIGHTS: Final = tuple(pow(3, i, _MODULUS) for i in range(CREDIT_CODE_LENGTH - 1))
_VALUE: Final = {ch: i for i, ch in enumerate(CREDIT_CODE_CHARS)}
_PERMIT_SEQ: Final = slice(CREDIT_CODE_LENGTH, CREDIT_CODE_LENGTH + 3)


def credit_code_check_char(first17: str) -> str:
    """The GB 32100 check character of the first 17 characters (all from the set)."""
    total = sum(_VALUE[ch] * w for ch, w in zip(first17, _WEIGHTS, strict=True))
    return CREDIT_CODE_CHARS[(_MODULUS - total % _MODULUS) % _MODULUS]


def credit_code_problem(code: str) -> str | None:
    """Why ``code`` is not a valid credit code, or None when it is."""
    if len(code) != CREDIT_CODE_LENGTH:
        return f"credit code {code!r} has {len(code)} characters, not {CREDIT_CODE_LENGTH}"
    bad = sorted({ch for ch in code if ch not in _VALUE})
    if bad:
        return f"credit code {code!r} has characters outside GB 32100's set: {''.join(bad)}"
    expected = credit_code_check_char(code[:-1])
    if code[-1] != expected:
        return (
            f"credit code {code!r} fails its check character: "
            f"ends in {code[-1]}, expected {expected}"
        )
    return None


def permit_no_problem(permit: str, credit_code: str) -> tuple[str, str] | None:
    """(code, reason) when ``permit`` is not a permit number of the unit with
    ``credit_code``, else None. Codes: ``permit_mismatch`` (another unit's credit code),
    ``bad_permit_no`` (not the HJ 608 shape)."""
    if permit[:CREDIT_CODE_LENGTH] != credit_code:
        return (
            "permit_mismatch",
            f"permit number {permit!r} does not start with the credit code {credit_code}",
        )
    if len(permit) != PERMIT_NO_LENGTH:
        return (
            "bad_permit_no",
            f"permit number {permit!r} has {len(permit)} characters, not {PERMIT_NO_LENGTH}",
        )
    seq = permit[_PERMIT_SEQ]
    if not (seq.isascii() and seq.isdigit()):
        return (
            "bad_permit_no",
            f"permit number {permit!r}: characters 19-21 must be a 3-digit sequence number",
        )
    if not ("A" <= permit[-1] <= "Z"):
        return (
            "bad_permit_no",
            f"permit number {permit!r} must end in a capital letter (P for a permit)",
        )
    return None
