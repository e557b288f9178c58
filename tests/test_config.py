"""config/: precedence (flags > environment > file > defaults), unknown keys, the checks
across sections, secrets masked."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import load_settings
from config.loader import ConfigError, masked_dump


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_flags_over_environment_over_file_over_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path, "[listen]\nport = 3000\nidle_timeout_s = 60\n[storage]\nbatch_rows = 7\n"
    )
    monkeypatch.setenv("HJ212_LISTEN__PORT", "4000")
    monkeypatch.setenv("HJ212_STORAGE__LINGER_MS", "50")
    s = load_settings(path, {"listen": {"port": 5000}})
    assert s.listen.port == 5000  # flag
    assert s.storage.linger_ms == 50  # environment
    assert (s.listen.idle_timeout_s, s.storage.batch_rows) == (60.0, 7)  # file
    assert s.storage.queue_rows == 200_000  # default
    monkeypatch.delenv("HJ212_LISTEN__PORT")
    assert load_settings(path).listen.port == 3000


def test_unknown_keys_and_bad_values_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"listen\.bogus"):
        load_settings(write(tmp_path, "[listen]\nbogus = 1\n"))
    with pytest.raises(ConfigError, match=r"listen\.port"):
        load_settings(write(tmp_path, "[listen]\nport = 70000\n"))
    with pytest.raises(ConfigError, match=r"gateway\.toml"):
        load_settings(write(tmp_path, "[listen\n"))


def test_a_buffer_smaller_than_the_largest_frame_is_refused(tmp_path: Path) -> None:
    """Accepted, it would fail on the first connection, inside the accept callback."""
    with pytest.raises(ConfigError, match="max_buffer_bytes must be larger"):
        load_settings(write(tmp_path, "[listen]\nmax_buffer_bytes = 4096\n"))
    s = load_settings(
        write(tmp_path, "[listen]\nmax_buffer_bytes = 4096\n[protocol]\nmax_frame_bytes = 2048\n")
    )
    assert s.listen.max_buffer_bytes == 4096


def test_an_unknown_time_zone_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown time zone 'Mars/Olympus'"):
        load_settings(write(tmp_path, '[protocol]\ntimezone = "Mars/Olympus"\n'))
    assert (
        load_settings(write(tmp_path, '[protocol]\ntimezone = "UTC"\n')).protocol.timezone == "UTC"
    )


def test_secrets_are_masked() -> None:
    s = load_settings(None, {"storage": {"dsn": "postgresql://u:hunter2@db/x"}})
    assert s.storage.dsn is not None
    assert s.storage.dsn.get_secret_value().endswith("@db/x")
    assert "hunter2" not in str(masked_dump(s))
