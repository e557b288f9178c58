"""Reading rosters: encodings, header aliases, line numbers, row checks and warnings."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from storage.roster_csv import RosterFileError, parse_roster
from storage.roster_ref import load_reference

SAMPLE = Path(__file__).parent / "data" / "roster-sample.csv"

GOOD = "91320116MA1X00010G"
OTHER = "91320281MA1X00020T"
BAD_CHECK = "91320116MA1X00010H"


def test_sample_roster() -> None:
    r = parse_roster(SAMPLE.read_bytes(), load_reference())
    assert r.problems == []
    assert r.warnings == []
    assert r.rows == 4
    assert [(e.line, e.city, e.county, e.outlet_type, e.park) for e in r.entries] == [
        (2, "南京市", "六合区", "water", "南京化学工业园区"),
        (3, "无锡市", "江阴市", "gas", "江阴高新技术产业开发区"),
        (4, "徐州市", "鼓楼区", "water", None),
        (5, "苏州市", "吴中区", "gas", None),
    ]
    first = r.entries[0]
    assert first.credit_code == GOOD
    assert first.permit_no == f"{GOOD}001P"
    assert first.networked_city is True
    assert r.entries[1].networked_province is False
    assert r.entries[2].remark == "500吨以上"
    assert first.monitored_content == "废水：流量、pH、COD、氨氮、总磷、总氮"


@pytest.mark.parametrize(
    ("encode", "name"),
    [
        (lambda t: t.encode("gbk"), "gbk"),
        (lambda t: codecs.BOM_UTF8 + t.encode("utf-8"), "utf-8-sig"),
        (lambda t: t.encode("utf-16"), "utf-16"),
        (lambda t: t.encode("utf-8"), "utf-8"),
    ],
)
def test_encodings(encode: object, name: str) -> None:
    text = SAMPLE.read_text(encoding="utf-8")
    r = parse_roster(encode(text), load_reference())  # type: ignore[operator]
    assert r.encoding == name
    assert len(r.entries) == 4
    assert r.entries[0].unit_name == "示例化工有限公司"


def test_english_headers_tabs_title_row_and_multiline_cells() -> None:
    """A title row above the header; a quoted cell over two lines shifts later line
    numbers; English aliases; tab separators; outlet type inferred from the content."""
    text = (
        "附件3 重点排污单位联网名单\n"
        "seq\tunit_name\tcounty\tcredit_code\tpermit_no\tmn\tcontent\tpark\trtd_interval_s\n"
        f'1\t"示例\n化工"\t六合区\t{GOOD}\t\tMN0001\t废水：流量\t\t\n'
        f"2\t示例热电\t江阴市\t{OTHER}\t{OTHER}001P\tMN0002\t废气：SO2\t不存在的园区\t20\n"
    )
    r = parse_roster(text.encode("utf-8"), load_reference())
    assert r.problems == []
    assert [(e.line, e.mn, e.city, e.outlet_type) for e in r.entries] == [
        (3, "MN0001", "南京市", "water"),
        (5, "MN0002", "无锡市", "gas"),
    ]
    assert r.entries[0].unit_name == "示例 化工"
    assert r.entries[1].rtd_interval_s == 20
    assert r.entries[1].park == "不存在的园区"
    assert (5, "park 不存在的园区 is not in the plan's list of 158 parks") in r.warnings
    assert (0, "no outlet type column: inferred from 监控内容 where possible") in r.warnings


BAD_ROWS = f"""排污单位名称,所属设区市,所属县（市、区）,统一社会信用代码,排污许可证编码,MN,排口类型
好单位甲,南京市,六合区,{GOOD},{GOOD}001P,MNGOOD01,废水
缺MN单位,南京市,六合区,{GOOD},,,废水
重复MN单位,南京市,六合区,{GOOD},,MNGOOD01,废水
未知县单位,,火星区,{GOOD},,MNBAD04,废气
鼓楼单位,,鼓楼区,{GOOD},,MNBAD05,废气
坏代码单位,南京市,六合区,{BAD_CHECK},,MNBAD06,废水
许可证不符单位,南京市,六合区,{GOOD},{OTHER}001P,MNBAD07,废水
好单位乙,泰州市,高新区,{OTHER},{OTHER}002P,MNGOOD02,工况
多错单位,上海市,浦东新区,91320116,,MN-BAD-09,污泥
"""


def test_bad_rows_are_listed_with_line_and_reason() -> None:
    r = parse_roster(BAD_ROWS.encode("utf-8"), load_reference())
    assert [(e.line, e.mn) for e in r.entries] == [(2, "MNGOOD01"), (9, "MNGOOD02")]
    assert r.entries[1].city == "泰州市"
    assert r.entries[1].county == "高新区"
    assert [(p.line, p.codes) for p in r.problems] == [
        (3, ("missing_mn",)),
        (4, ("duplicate_mn",)),
        (5, ("unknown_county",)),
        (6, ("ambiguous_county",)),
        (7, ("bad_credit_code",)),
        (8, ("permit_mismatch",)),
        (10, ("bad_mn", "bad_credit_code", "unknown_city", "bad_outlet_type")),
    ]
    reasons = {p.line: p.reason for p in r.problems}
    assert reasons[4] == "MN MNGOOD01 is already on line 2"
    assert reasons[6] == (
        "county '鼓楼区' exists in 南京市、徐州市: give the city (city column or --city)"
    )
    assert reasons[7] == (
        f"credit code '{BAD_CHECK}' fails its check character: ends in H, expected G"
    )
    assert reasons[8] == (f"permit number '{OTHER}001P' does not start with the credit code {GOOD}")


def test_city_option_resolves_ambiguous_county() -> None:
    r = parse_roster(BAD_ROWS.encode("utf-8"), load_reference(), city="徐州市")
    by_line = {e.line: e for e in r.entries}
    assert (by_line[6].city, by_line[6].county) == ("徐州市", "鼓楼区")
    # the city column wins over --city, with a warning
    assert (by_line[2].city, by_line[2].county) == ("南京市", "六合区")
    assert (2, "city column says 南京市, --city says 徐州市: the column is used") in r.warnings
    # 火星区 is still unknown, now in 徐州市
    assert [p.codes for p in r.problems if p.line == 5] == [("unknown_county",)]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("a,b,c\n1,2,3\n", "no header row with an MN column"),
        ("排污单位名称,MN,统一社会信用代码\nx,y,z\n", "missing columns: county"),
    ],
)
def test_unusable_files(text: str, words: str) -> None:
    with pytest.raises(RosterFileError) as info:
        parse_roster(text.encode("utf-8"), load_reference())
    assert words in str(info.value)


def test_not_text() -> None:
    with pytest.raises(RosterFileError, match="neither UTF-8 nor GBK"):
        parse_roster(b"MN,\x80\xff" * 10, load_reference())
