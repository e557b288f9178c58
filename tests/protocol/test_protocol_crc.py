"""CRC16: the XOR-fold implementation against the standard's bit loop, and the variants."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from protokit import VECTORS

from protocol import CrcVariant, hj212_crc, match_variant, modbus_crc
from protocol.crc import _T, _U, hj212_crc_naive, hj212_crc_units, swap16

STANDARD_EXAMPLE = (
    b"QN=20160801085857223;ST=32;CN=1062;PW=100000;"
    b"MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&"
)
LOG_SEGMENT = (
    "QN=20240315103500007;ST=32;CN=3020;PW=123456;MN=88888880000000000000A001;Flag=5;"
    "CP=&&DataTime=20240315103455;PolId=w01018;i11001-Info=//开始零点校准//&&"
)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", 0xFFFF),
        (b"123456789", 0x2F80),
        (b"ST=91", 0xA3C1),
        (STANDARD_EXAMPLE, 0x1C80),
    ],
)
def test_known_values(data: bytes, expected: int) -> None:
    """protocol.md 2.3: the fold and the naive loop both give the published values."""
    assert hj212_crc(data) == expected
    assert hj212_crc_naive(data) == expected


def test_standard_example_is_101_bytes() -> None:
    assert len(STANDARD_EXAMPLE) == 101


def test_register_trace_of_st91() -> None:
    """protocol.md 2.3: the register after each byte of ``ST=91``."""
    expected = [(0x00AC, 0x7D00), (0x0029, 0xDEC1), (0x00E3, 0x8941), (0x00B0, 0xB401),
                (0x0085, 0xA3C1)]  # fmt: skip
    reg = 0xFFFF
    for byte, (xored, after) in zip(b"ST=91", expected, strict=True):
        reg = (reg >> 8) ^ byte
        assert reg == xored
        for _ in range(8):
            reg = (reg >> 1) ^ 0xA001 if reg & 1 else reg >> 1
        assert reg == after
        # The table form gives the same register.
        assert _T[xored] == after


def test_every_vector_crc_matches_its_wire() -> None:
    for vector in VECTORS:
        wire = vector["wire"].encode("utf-8")
        segment = wire[6:-6]
        assert int(wire[2:6]) == len(segment), vector["name"]
        assert hj212_crc(segment) == int(wire[-6:-2], 16), vector["name"]
        assert hj212_crc_naive(segment) == int(wire[-6:-2], 16), vector["name"]


def test_u_to_the_eighth_is_identity() -> None:
    """The algebra the fold relies on (performance.md section 2)."""
    for x in range(256):
        y = x
        for _ in range(8):
            y = _U[y]
        assert y == x


def test_low_byte_of_a_nonempty_crc_is_one_of_eight_values() -> None:
    assert {t & 0xFF for t in _T} == {0x00, 0x01, 0x40, 0x41, 0x80, 0x81, 0xC0, 0xC1}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2100))
def test_fold_equals_naive(data: bytes) -> None:
    assert hj212_crc(data) == hj212_crc_naive(data)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=8, max_size=64), st.integers(0, 55))
def test_swapping_bytes_eight_apart_is_invisible(data: bytes, i: int) -> None:
    """The documented weakness (performance.md 2): a demonstration that the fold is the
    algorithm, and a reminder that "CRC ok" is a weak signal."""
    if i + 8 >= len(data):
        return
    swapped = bytearray(data)
    swapped[i], swapped[i + 8] = swapped[i + 8], swapped[i]
    assert hj212_crc(bytes(swapped)) == hj212_crc(data)


def test_fold_accepts_bytearray_and_memoryview() -> None:
    assert hj212_crc(bytearray(b"123456789")) == 0x2F80
    assert hj212_crc(memoryview(b"123456789")) == 0x2F80


def test_modbus_check_value() -> None:
    assert modbus_crc(b"123456789") == 0x4B37
    assert modbus_crc(STANDARD_EXAMPLE) == 0x0759


def test_match_variant_field_quirk_q3() -> None:
    segment = (
        b"QN=20240101120000000;ST=32;CN=2011;PW=123456;MN=88888880000001;Flag=4;"
        b"CP=&&DataTime=20240101120000;w01018-Rtd=35.2,w01018-Flag=N&&"
    )
    assert match_variant(segment, 0xA141) is CrcVariant.HJ212
    assert match_variant(segment, 0xE7BE) is CrcVariant.MODBUS
    assert match_variant(segment, 0xBEE7) is CrcVariant.MODBUS_SWAPPED
    assert match_variant(segment, 0x1234) is CrcVariant.NONE
    assert swap16(0xE7BE) == 0xBEE7


def test_non_ascii_variants_of_example_12() -> None:
    """protocol.md 1.3: the same log segment under the three CRC readings."""
    assert hj212_crc(LOG_SEGMENT.encode("utf-8")) == 0x7F80
    assert hj212_crc(LOG_SEGMENT.encode("gb18030")) == 0x5D80
    assert hj212_crc_units(LOG_SEGMENT) == 0xE981
    assert hj212_crc_units("ST=91") == 0xA3C1  # ASCII text: same as the byte routine
