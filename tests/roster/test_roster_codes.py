"""Credit codes (GB 32100-2015 check character) and permit numbers (HJ 608-2017)."""

from __future__ import annotations

import pytest

from storage.roster_codes import credit_code_check_char, credit_code_problem, permit_no_problem


@pytest.mark.parametrize(
    "code",
    [
        "91130200699229617X",  # HJ 608-2017 appendix A example (check character X)
        "911302307808371268",  # the permit-numbering rule's example (check character 8)
        "91320116MA1X00010G",  # the roster sample
        "91320281MA1X00020T",
        "91320302MA1X00030K",
        "91320506MA1X00040Q",
    ],
)
def test_valid_credit_codes(code: str) -> None:
    assert credit_code_problem(code) is None
    assert credit_code_check_char(code[:17]) == code[17]


def test_check_character_worked_by_hand() -> None:
    """91320116MA1X00010 with weights 1 3 9 27 19 26 16 17 20 29 25 13 8 24 10 30 28:
    9*1 + 1*3 + 3*9 + 2*27 + 0*19 + 1*26 + 1*16 + 6*17 + M(21)*20 + A(10)*29 + 1*25
    + X(29)*13 + 0*8 + 0*24 + 0*10 + 1*30 + 0*28 = 1379; 1379 mod 31 = 15; 31 - 15 = 16,
    the character of value 16: G."""
    assert credit_code_check_char("91320116MA1X00010") == "G"


@pytest.mark.parametrize(
    ("code", "words"),
    [
        ("91320116MA1X00010H", "check character: ends in H, expected G"),
        ("91320116MA1X0001", "has 16 characters, not 18"),
        ("91320116MA1X00010GG", "has 19 characters"),
        ("91320116MA1I00010G", "outside GB 32100's set: I"),
        ("91320116MA1O0001SG", "outside GB 32100's set: OS"),
    ],
)
def test_invalid_credit_codes(code: str, words: str) -> None:
    problem = credit_code_problem(code)
    assert problem is not None
    assert words in problem


def test_permit_numbers() -> None:
    code = "91320116MA1X00010G"
    assert permit_no_problem(f"{code}001P", code) is None
    assert permit_no_problem(f"{code}012V", code) is None
    mismatch = permit_no_problem("91320281MA1X00020T001P", code)
    assert mismatch is not None
    assert mismatch[0] == "permit_mismatch"
    assert "does not start with the credit code 91320116MA1X00010G" in mismatch[1]
    for bad, words in [
        (f"{code}01P", "21 characters"),
        (f"{code}0A1P", "3-digit sequence"),
        (f"{code}0011", "capital letter"),
    ]:
        problem = permit_no_problem(bad, code)
        assert problem is not None
        assert problem[0] == "bad_permit_no"
        assert words in problem[1]
