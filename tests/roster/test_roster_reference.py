"""Reference data: 13 cities, 95 counties plus 2 functional zones, aliases, ambiguity,
parks and the plan's targets (shipped inside the package)."""

from __future__ import annotations

import pytest

from storage.roster_ref import CountyError, load_reference


def test_cities_counties_parks_targets() -> None:
    ref = load_reference()
    assert ref.cities == (
        "南京市", "无锡市", "徐州市", "常州市", "苏州市", "南通市", "连云港市",
        "淮安市", "盐城市", "扬州市", "镇江市", "泰州市", "宿迁市",
    )  # fmt: skip
    assert len(ref.counties) == 97
    assert sum(c.kind != "functional zone" for c in ref.counties) == 95
    assert len(ref.parks) == 158
    assert ref.province_target == 9606
    assert ref.target("南京市") == 324
    assert ref.target("苏州市") == 4046
    assert ref.target("unknown") is None


@pytest.mark.parametrize(
    ("text", "city", "expected"),
    [
        ("鼓楼区", "南京市", ("南京市", "鼓楼区", None)),
        ("鼓楼区", "徐州市", ("徐州市", "鼓楼区", None)),
        ("徐州市鼓楼区", None, ("徐州市", "鼓楼区", None)),
        ("金坛市", None, ("常州市", "金坛区", "金坛市")),
        ("海门市", None, ("南通市", "海门区", "海门市")),
        ("港闸区", None, ("南通市", "崇川区", "港闸区")),
        ("铜山县", "徐州市", ("徐州市", "铜山区", "铜山县")),
        ("苏州工业园区", None, ("苏州市", "工业园区", "苏州工业园区")),
        ("高新区", "泰州市", ("泰州市", "高新区", None)),
        ("高新区", "苏州市", ("苏州市", "虎丘区", "高新区")),
        (" 江宁区 ", None, ("南京市", "江宁区", None)),
        ("江阴市", None, ("无锡市", "江阴市", None)),
    ],
)
def test_resolve_county(text: str, city: str | None, expected: tuple[str, str, str | None]) -> None:
    r = load_reference().resolve_county(text, city)
    assert (r.city, r.county, r.alias) == expected


@pytest.mark.parametrize(
    ("text", "city", "code", "words"),
    [
        ("鼓楼区", None, "ambiguous_county", "exists in 南京市、徐州市"),
        ("高新区", None, "ambiguous_county", "exists in 苏州市、泰州市"),
        ("火星区", None, "unknown_county", "unknown county"),
        ("江宁区", "徐州市", "county_not_in_city", "is in 南京市, not in 徐州市"),
        ("南京市鼓楼区", "徐州市", "county_not_in_city", "names 南京市"),
        ("", "南京市", "missing_county", "empty"),
    ],
)
def test_unresolvable_counties(text: str, city: str | None, code: str, words: str) -> None:
    with pytest.raises(CountyError) as info:
        load_reference().resolve_county(text, city)
    assert info.value.code == code
    assert words in str(info.value)


def test_city_names_and_parks() -> None:
    ref = load_reference()
    assert ref.city("南京") == "南京市"
    assert ref.city(" 连云港市 ") == "连云港市"
    assert ref.city("上海市") is None
    park = ref.park("南京化学工业园区", "南京市")
    assert park is not None
    assert (park.county, park.level) == ("六合区", "省级")
    assert ref.park("南京化学工业园区", "徐州市") is None
    # a park listed under a former county name resolves to the current one
    assert {p.county for p in ref.parks if p.city == "常州市"} <= set(ref.counties_of("常州市"))
