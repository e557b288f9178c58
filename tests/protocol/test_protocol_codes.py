"""Code tables: profiles, CN roles, the 2005 -> 2017 factor map, info codes, flags."""

from __future__ import annotations

import pytest

from protocol import (
    ProtocolError,
    get_profile,
    known_cns,
    known_sts,
    profile_for_version,
    profile_names,
)


def test_profiles_and_version_defaults() -> None:
    assert set(profile_names()) == {"2005", "2017", "2025", "js-db32-4349", "hebei"}
    assert profile_for_version("2005").name == "2005"
    assert profile_for_version("2017").name == "2017"
    assert profile_for_version("2025").name == "2025"
    assert profile_for_version("v7").name == "2025"
    with pytest.raises(ProtocolError):
        get_profile("nope")


def test_tables_are_complete() -> None:
    p = get_profile("2017")
    water = [c for c, f in p._factors.items() if f.family == "water"]
    gas = [c for c, f in p._factors.items() if f.family == "gas"]
    assert len(water) == 63  # HJ 212-2017 Table B.1
    assert len(gas) == 121  # Table B.2
    assert p.factor("w01018") is not None
    assert p.factor("w01018").unit == "mg/L"  # type: ignore[union-attr]
    assert p.factor("a21026").cou_unit == "kg"  # type: ignore[union-attr]
    assert p.factor("LA") is not None
    assert p.factor("e20101").name_en == "WWTP outlet flow"  # type: ignore[union-attr]
    assert p.factor("g12301") is not None
    assert p.factor("zzzzzz") is None
    assert len(p.sts) == 20
    assert set(known_sts()) >= {"21", "31", "32", "51", "52", "91"}
    assert known_cns() >= {"2011", "9011", "9014", "9015", "1021", "2072"}


def test_cn_roles() -> None:
    p = get_profile("2017")
    assert p.cn_info("2011").device_role == "upload"  # type: ignore[union-attr]
    assert p.cn_info("2011").reply == "9014"  # type: ignore[union-attr]
    assert p.cn_info("1013").reply == "9013"  # type: ignore[union-attr]
    assert p.cn_info("1012").device_role == "none"  # type: ignore[union-attr]
    assert p.cn_info("9015") is None
    assert get_profile("2025").cn_info("9015").reply == "9013"  # type: ignore[union-attr]
    assert get_profile("2005").cn_info("1001").sender == "platform"  # type: ignore[union-attr]
    assert get_profile("2025").cn_info("1001").sender == "device"  # type: ignore[union-attr]
    assert get_profile("js-db32-4349").cn_info("2011") is not None


@pytest.mark.parametrize(
    ("code", "st", "expected"),
    [
        ("001", "32", "w01001"),
        ("01", "31", "a34013"),
        ("01", "32", None),  # a gas code read under a water ST
        ("001", "31", None),
        ("B01", None, "w00000"),
        ("B02", None, "a00000"),
        ("S01", "31", "a19001"),
        ("060", "32", "w21003"),
        ("02", None, "a21026"),
        ("w01018", "31", "w01018"),
        ("a99948", None, "a99948"),
        ("e20101", "52", "e20101"),
        ("B03", "23", None),
        ("", None, None),
        ("w0101-", None, None),
    ],
)
def test_normalise_code(code: str, st: str | None, expected: str | None) -> None:
    assert get_profile("2017").normalise_code(code, st) == expected


def test_info_codes_by_profile() -> None:
    assert get_profile("2017").info("i12001").name_zh == "工作状态"  # type: ignore[union-attr]
    assert get_profile("2017").info("i33312").code == "i3331x"  # type: ignore[union-attr]
    assert get_profile("2017").info("I33400").code == "i33400"  # type: ignore[union-attr]
    assert get_profile("2017").info("i12101") is None
    assert get_profile("hebei").info("i12101") is not None
    assert "differs" in get_profile("hebei").info("i22002").name_en  # type: ignore[union-attr]
    assert get_profile("2025").info("i23005").name_en == "DAU hardware id"  # type: ignore[union-attr]
    assert get_profile("js-db32-4349").info("i12101") is None


def test_flags() -> None:
    assert get_profile("2017").flag_meaning("B") == "communication fault between instrument and DAU"
    assert get_profile("2005").flag_meaning("P") == "power failure"
    assert get_profile("2017").flag_meaning("P") is None
    assert get_profile("2005").flag_meaning("3") == "ambient-air station: normal data"
