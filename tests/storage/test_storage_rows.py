"""storage.rows: which table each item of a packet lands in, with which values."""

from __future__ import annotations

import pytest
from storekit import MN_2017, RECEIVED, SHANGHAI_US, FakeProfile, entry, frame, packet, scenario, us

from protocol.errors import ProtocolError
from storage.base import Entry, InfoRow, ReadingRow, StatusRow
from storage.rows import entry_for_packet


def _reading(**kw: object) -> ReadingRow:
    base: dict[str, object] = dict.fromkeys(ReadingRow._fields)
    base.update(kw)
    return ReadingRow(**base)  # type: ignore[arg-type]


def test_realtime_values_flags_sample_time_and_raw_text() -> None:
    e = scenario()[0]
    t = us("2024-03-15 02:30:00")
    assert list(e.readings) == [
        _reading(
            data_time_us=t,
            mn=MN_2017,
            cn=2011,
            code="w01018",
            code_2017="w01018",
            rtd=35.6,
            flag="N",
            eflag="A01",
            sample_time_us=us("2024-03-15 02:00:00"),
            raw="SampleTime=20240315100000,Rtd=035.60,Flag=N,EFlag=A01",
            received_at_us=RECEIVED,
        ),
        _reading(
            data_time_us=t,
            mn=MN_2017,
            cn=2011,
            code="w21003",
            code_2017="w21003",
            rtd=1.204,
            flag="N",
            raw="Rtd=1.204,Flag=N",
            received_at_us=RECEIVED,
        ),
    ]
    assert e.infos == []
    assert e.statuses == []
    assert e.row_count == 3


def test_interval_values_and_unknown_fields_go_to_extra() -> None:
    e = scenario()[1]
    assert list(e.readings) == [
        _reading(
            data_time_us=us("2024-03-15 02:20:00"),
            mn=MN_2017,
            cn=2051,
            code="a21026",
            code_2017="a21026",
            min=10.1,
            avg=12.3,
            max=15.0,
            zs_avg=14.0,
            cou=1.2,
            flag="N",
            extra='{"Xyz":"abc"}',
            raw="Min=10.1,Avg=12.3,Max=15.0,ZsAvg=14.0,Cou=1.2,Flag=N,Xyz=abc",
            received_at_us=RECEIVED + 1,
        )
    ]


def test_info_items_carry_polid_and_numeric_value() -> None:
    e = scenario()[2]
    t = us("2024-03-15 02:30:00")
    r = RECEIVED + 2
    assert e.readings == []
    assert list(e.infos) == [
        InfoRow(t, MN_2017, 3020, "w01018", "i12001", "1", 1.0, r),
        InfoRow(t, MN_2017, 3020, "w01018", "i13004", "168.0", 168.0, r),
        InfoRow(t, MN_2017, 3020, "w01018", "i11001", "log text", None, r),
    ]


def test_info_without_polid_has_empty_pol_id() -> None:
    p = packet("3020", "20240315103000", {"i21001": {"Info": "5"}})
    e = entry(p, RECEIVED)
    assert [(i.pol_id, i.info_code, i.value_num) for i in e.infos] == [("", "i21001", 5.0)]


def test_run_status_run_time_and_restart_time() -> None:
    entries = scenario()
    assert list(entries[3].statuses) == [
        StatusRow(us("2024-03-15 02:30:00"), MN_2017, 2021, "SB1", "RS", "1", 1.0, RECEIVED + 3),
        StatusRow(us("2024-03-15 02:30:00"), MN_2017, 2021, "SB2", "RS", "0", 0.0, RECEIVED + 3),
    ]
    assert list(entries[4].statuses) == [
        StatusRow(
            us("2024-03-14 16:00:00"), MN_2017, 2041, "SB1", "RT", "23.50", 23.5, RECEIVED + 4
        )
    ]
    assert list(entries[5].statuses) == [
        StatusRow(
            us("2024-03-15 00:01:05"),
            MN_2017,
            2081,
            "",
            "RestartTime",
            "20240315075942",
            None,
            RECEIVED + 5,
        )
    ]
    assert entries[3].readings == entries[4].readings == entries[5].readings == []


def test_2005_code_is_kept_and_normalised() -> None:
    (row,) = scenario()[6].readings
    assert (row.mn, row.code, row.code_2017, row.rtd) == ("88888880000001", "011", "w01018", 231.0)


def test_normalise_gets_the_packet_st() -> None:
    profile = FakeProfile()
    p = packet("2011", "20240315103000", {"a21026": {"Rtd": "1"}, "zz999": {"Rtd": "2"}}, st="31")
    e = entry_for_packet(p, frame(p, RECEIVED), utc_offset_us=SHANGHAI_US, profile=profile)  # type: ignore[arg-type]
    assert profile.calls == [("a21026", "31"), ("zz999", "31")]
    assert [(r.code, r.code_2017) for r in e.readings] == [("a21026", "a21026"), ("zz999", None)]


def test_non_numeric_cn_stores_only_the_frame() -> None:
    e = scenario()[7]
    assert e.readings == e.infos == e.statuses == ()
    assert e.frame.cn == "20X1"
    assert e.row_count == 1


def test_packet_without_datatime_uses_received_at() -> None:
    p = packet("2011", None, {"w01018": {"Rtd": "1.5"}})
    (row,) = entry(p, RECEIVED).readings
    assert row.data_time_us == RECEIVED


def test_empty_value_is_null_but_kept_in_raw() -> None:
    p = packet("2051", "20240315102000", {"w01018": {"Avg": "3.5", "Cou": ""}})
    (row,) = entry(p, RECEIVED).readings
    assert (row.avg, row.cou, row.raw) == (3.5, None, "Avg=3.5,Cou=")


def test_invalid_sample_time_is_null_not_an_error() -> None:
    p = packet("2011", "20240315103000", {"w01018": {"SampleTime": "2024", "Rtd": "1"}})
    (row,) = entry(p, RECEIVED).readings
    assert row.sample_time_us is None
    assert row.raw == "SampleTime=2024,Rtd=1"


def test_invalid_datatime_raises_protocol_error() -> None:
    p = packet("2011", "20241399103000", {"w01018": {"Rtd": "1"}})
    with pytest.raises(ProtocolError):
        entry(p, RECEIVED)


def test_milliseconds_in_datatime() -> None:
    p = packet("2011", "20240315103000250", {"w01018": {"Rtd": "1"}})
    (row,) = entry(p, RECEIVED).readings
    assert row.data_time_us == us("2024-03-15 02:30:00.250")


def test_code_with_info_and_values_splits_between_tables() -> None:
    p = packet("3020", "20240315103000", {"i13004": {"Info": "2", "Flag": "N"}})
    e = entry(p, RECEIVED)
    assert [i.info_code for i in e.infos] == ["i13004"]
    assert [(r.code, r.flag, r.raw) for r in e.readings] == [("i13004", "N", "Flag=N")]


def test_rejected_frame_entry_counts_one_row() -> None:
    assert scenario()[-1] == Entry(frame(None, RECEIVED + 100, ok=False))
    assert scenario()[-1].row_count == 1
