"""``device import``: good rows imported, bad rows listed by line and reason, idempotent."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from rosterkit import main
from test_roster_csv import BAD_ROWS, GOOD, OTHER

SAMPLE = Path(__file__).parent / "data" / "roster-sample.csv"


def _devices(dsn: str) -> list[tuple[Any, ...]]:
    async def fetch() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                "SELECT mn, unit_name, city, county, credit_code, permit_no, outlet_type,"
                " roster_source FROM hj212.device ORDER BY mn"
            )
        finally:
            await conn.close()
        return [tuple(r) for r in rows]

    return asyncio.run(fetch())


def test_bad_rows_import_the_good_ones(
    pg_migrated_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "roster.csv"
    path.write_text(BAD_ROWS, encoding="gbk")
    assert main(["device", "import", str(path), "--dsn", pg_migrated_dsn]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        f"{path}: 9 rows read (gbk); 2 valid; imported: 2 new, 0 updated, 0 unchanged; "
        "7 not imported"
    )
    assert out[1:8] == [
        "line 3: (no MN) 缺MN单位: missing_mn: MN is empty",
        "line 4: MNGOOD01 重复MN单位: duplicate_mn: MN MNGOOD01 is already on line 2",
        "line 5: MNBAD04 未知县单位: unknown_county: unknown county '火星区'",
        "line 6: MNBAD05 鼓楼单位: ambiguous_county: county '鼓楼区' exists in 南京市、徐州市: "
        "give the city (city column or --city)",
        "line 7: MNBAD06 坏代码单位: bad_credit_code: credit code '91320116MA1X00010H' fails "
        "its check character: ends in H, expected G",
        "line 8: MNBAD07 许可证不符单位: permit_mismatch: permit number "
        f"'{OTHER}001P' does not start with the credit code {GOOD}",
        "line 10: MN-BAD-09 多错单位: bad_mn, bad_credit_code, unknown_city, bad_outlet_type: "
        "MN 'MN-BAD-09' is not 1-24 letters and digits; credit code '91320116' has 8 "
        "characters, not 18; unknown city '上海市' (not one of Jiangsu's 13); outlet type "
        "'污泥' is not 废水, 废气, 工况 or 用电",
    ]
    assert _devices(pg_migrated_dsn) == [
        ("MNGOOD01", "好单位甲", "南京市", "六合区", GOOD, f"{GOOD}001P", "water", "roster.csv"),
        (
            "MNGOOD02",
            "好单位乙",
            "泰州市",
            "高新区",
            OTHER,
            f"{OTHER}002P",
            "process",
            "roster.csv",
        ),
    ]

    # the same file again changes nothing; a changed row is updated
    assert main(["device", "import", str(path), "--dsn", pg_migrated_dsn, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert (doc["inserted"], doc["updated"], doc["unchanged"], doc["invalid"]) == (0, 0, 2, 7)
    assert [p["line"] for p in doc["problems"]] == [3, 4, 5, 6, 7, 8, 10]
    assert doc["problems"][3]["codes"] == ["ambiguous_county"]

    path.write_text(BAD_ROWS.replace("好单位甲", "好单位甲（更名）"), encoding="utf-8")
    assert main(["device", "import", str(path), "--dsn", pg_migrated_dsn, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert (doc["inserted"], doc["updated"], doc["unchanged"]) == (0, 1, 1)
    assert _devices(pg_migrated_dsn)[0][1] == "好单位甲（更名）"


def test_city_option_and_columns_absent_from_the_file(
    pg_migrated_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--city places 鼓楼区 in 徐州市; a second file without the permit column leaves the
    stored permit numbers alone."""
    path = tmp_path / "roster.csv"
    path.write_text(BAD_ROWS, encoding="utf-8")
    assert main(["device", "import", str(path), "--city", "徐州", "--dsn", pg_migrated_dsn]) == 1
    capsys.readouterr()
    devices = {d[0]: d for d in _devices(pg_migrated_dsn)}
    assert devices["MNBAD05"][2:4] == ("徐州市", "鼓楼区")

    slim = tmp_path / "slim.csv"
    slim.write_text(
        f"MN,排污单位名称,所属县（市、区）,统一社会信用代码,排口类型\nMNGOOD01,好单位甲,六合区,{GOOD},废气\n",
        encoding="utf-8",
    )
    assert main(["device", "import", str(slim), "--dsn", pg_migrated_dsn, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["inserted"], doc["updated"], doc["unchanged"]) == (0, 1, 0)
    devices = {d[0]: d for d in _devices(pg_migrated_dsn)}
    assert devices["MNGOOD01"][5:8] == (f"{GOOD}001P", "gas", "slim.csv")


def test_sample_roster_and_dry_run(
    pg_migrated_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["device", "import", str(SAMPLE), "--dry-run"]) == 0
    assert "4 valid (dry run: nothing written); 0 not imported" in capsys.readouterr().out
    assert _devices(pg_migrated_dsn) == []
    assert main(["device", "import", str(SAMPLE), "--dsn", pg_migrated_dsn]) == 0
    assert "imported: 4 new, 0 updated, 0 unchanged" in capsys.readouterr().out
    assert len(_devices(pg_migrated_dsn)) == 4


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["device", "import", "/nonexistent/roster.csv", "--dry-run"], "cannot read"),
        (["device", "import", str(SAMPLE), "--city", "上海市", "--dry-run"], "is not one of"),
        (["device", "import", str(SAMPLE)], "the roster is kept in PostgreSQL"),
    ],
)
def test_usage_errors(
    argv: list[str],
    words: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HJ212_STORAGE__DSN", raising=False)
    assert main(argv) == 2
    assert words in capsys.readouterr().err


def test_device_without_action_is_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["device"]) == 2
    assert "import" in capsys.readouterr().err
