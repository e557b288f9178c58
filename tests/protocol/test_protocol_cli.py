"""``hj212-gateway decode``: JSON Lines output, exit codes 0/1/2, no password in output."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from protokit import VECTORS
from test_protocol_quirks import Q1, Q3_MODBUS, Q4

from gateway.cli import main

PASSWORD = "123456"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, Any]]]:
    code = main(["decode", *argv])
    out = capsys.readouterr().out
    assert PASSWORD not in out
    return code, [json.loads(line) for line in out.splitlines()]


def _write(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "capture.bin"
    path.write_bytes(data)
    return str(path)


def test_raw_stream_of_vectors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = b"".join(v["wire"].encode() for v in VECTORS)
    code, objs = _run(capsys, _write(tmp_path, data))
    assert code == 0
    assert len(objs) == len(VECTORS)
    first = objs[0]
    assert set(first) == {
        "ok", "version", "qn", "st", "cn", "mn", "flag", "ack_requested", "pnum", "pno", "cp",
        "data", "quirks", "crc_variant",
    }  # fmt: skip
    assert first["ok"] is True
    assert first["version"] == "2017"
    assert first["flag"] == 5
    assert first["cp"] == {"DataTime": "20240315103000"}
    assert first["data"]["w01018"] == {
        "SampleTime": "20240315100000", "Rtd": 35.6, "Flag": "N", "EFlag": "A01",
    }  # fmt: skip
    assert first["crc_variant"] == "hj212"
    log = next(o for o in objs if o["cn"] == "3020" and "i11001" in o["data"])
    assert log["data"]["i11001"]["Info"] == "开始零点校准"
    old = next(o for o in objs if o["mn"] == "88888880000001" and o["qn"] is None)
    assert old["flag"] is None
    assert old["version"] == "2005"
    assert old["quirks"] == ["missing_qn", "missing_flag"]
    split = next(o for o in objs if o["pnum"] is not None)
    assert (split["pnum"], split["pno"]) == (2, 1)


def test_lines_without_crlf_and_raw_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [v["wire"].rstrip("\r\n") for v in VECTORS[:3]]
    data = ("\n".join(lines)).encode()  # the last line has no line end at all
    code, objs = _run(capsys, _write(tmp_path, data), "--raw")
    assert code == 0
    assert [o["quirks"] for o in objs] == [[], [], []]
    assert objs[0]["data_raw"]["w00000"] == {"Rtd": "12.35", "Flag": "N"}
    assert objs[0]["data"]["w00000"] == {"Rtd": 12.35, "Flag": "N"}


def test_rejects_exit_one_with_offsets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = VECTORS[0]["wire"].encode()
    data = good + b"noise!" + Q3_MODBUS + good
    code, objs = _run(capsys, _write(tmp_path, data))
    assert code == 1
    assert [o["ok"] for o in objs] == [True, False, False, True]
    assert objs[1] == {
        "ok": False, "reason": "garbage", "offset": len(good), "excerpt": "noise!",
    }  # fmt: skip
    assert objs[2]["reason"] == "crc_mismatch"
    assert objs[2]["offset"] == len(good) + 6
    assert "PW=***" in objs[2]["excerpt"]
    assert len(objs[2]["excerpt"]) <= 160


def test_crc_variant_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, Q3_MODBUS)
    code, objs = _run(capsys, path, "--crc-variant", "hj212", "modbus")
    assert code == 0
    assert objs[0]["crc_variant"] == "modbus"


def test_strict_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, Q1 + Q4)
    code, objs = _run(capsys, path)
    assert code == 0
    assert [o["quirks"] for o in objs] == [["crc_lower"], ["length_repaired"]]
    code, objs = _run(capsys, path, "--strict")
    assert code == 1
    assert [o["reason"] for o in objs] == ["bad_crc_field", "length_mismatch"]


def test_decode_error_is_a_reject(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from protocol import encode_frame

    frame = encode_frame("QN=1;ST=32;CN=2011;PW=123456;MN=m;Flag=4;CP=&&DataTime=2024&&")
    code, objs = _run(capsys, _write(tmp_path, frame))
    assert code == 1
    assert objs[0]["reason"] == "bad_time"
    assert objs[0]["offset"] == 0


def test_password_never_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from protocol import encode_frame

    frame = encode_frame(
        f"QN=20240101000000000;ST=32;CN=1072;PW={PASSWORD};MN=m;Flag=5;CP=&&NewPW=654321&&"
    )
    broken = b"##0099QN=1;ST=32;PW=" + PASSWORD.encode() + b";MN=m"
    code, objs = _run(capsys, _write(tmp_path, frame + broken), "--raw")
    assert code == 1
    assert objs[0]["cp"] == {"NewPW": "***"}
    assert "654321" not in json.dumps(objs)
    assert objs[1]["ok"] is False


def test_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    data = VECTORS[1]["wire"].encode()

    class _Stdin:
        buffer = io.BytesIO(data)

    monkeypatch.setattr("sys.stdin", _Stdin())
    code, objs = _run(capsys, "-")
    assert code == 0
    assert objs[0]["cn"] == "9014"


def test_missing_file_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["decode", str(tmp_path / "absent.bin")])
    assert code == 2
    assert "cannot read" in capsys.readouterr().err


def test_bad_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["decode", "--crc-variant", "crc32", "-"])
    assert info.value.code == 2
    capsys.readouterr()


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["decode", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "Examples:" in text
    assert "data_raw" in text
