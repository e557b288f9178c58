"""``hj212-gateway migrate`` / ``maintain``: output, exit codes, both stores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway import cli, cmd_db
from storage.migrate import load_migrations


def main(argv: list[str]) -> int:
    """The CLI with only the database commands (the others need the whole gateway)."""
    parser = cli._Parser(prog="hj212-gateway")
    sub = parser.add_subparsers(dest="command", parser_class=cli._Parser)
    cmd_db.register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_migrate_then_nothing_to_apply_on_postgresql(
    pg_clean_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", "--dsn", pg_clean_dsn]) == 0
    lines = capsys.readouterr().out.splitlines()
    files = [m.filename for m in load_migrations()]
    assert [line for line in lines if line.endswith(".sql")] == files
    assert main(["migrate", "--dsn", pg_clean_dsn, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"store": "postgres", "done": []}
    assert main(["maintain", "--dsn", pg_clean_dsn, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["store"] == "postgres"
    assert all(
        line.startswith(("created partition", "dropped partition", "compressed", "dropped"))
        for line in out["done"]
    )


def test_sqlite_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "gw.sqlite3")
    assert main(["migrate", "--sqlite-path", path]) == 0
    applied = capsys.readouterr().out.splitlines()
    assert applied[0] == "sqlite 001_core"
    assert all(line.startswith("sqlite 0") for line in applied)
    assert main(["migrate", "--sqlite-path", path]) == 0
    assert capsys.readouterr().out == "nothing to apply\n"
    assert main(["maintain", "--sqlite-path", path]) == 0
    assert capsys.readouterr().out == "deleted 0 frames older than 30 days\n"


def test_unreachable_database_exits_1_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", "--dsn", "postgresql://postgres@127.0.0.1:1/none"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("hj212-gateway migrate: failed: connect: ")
    assert err.count("\n") == 1


def test_bad_config_and_bad_flags_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[storage]\nbatch_rows = 0\n", encoding="utf-8")
    assert main(["maintain", "--config", str(bad)]) == 2
    with pytest.raises(SystemExit) as info:
        main(["migrate", "--no-such-flag"])
    assert info.value.code == 2
