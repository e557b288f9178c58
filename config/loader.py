"""Build the effective ``Settings`` from a TOML file, the environment and CLI overrides."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from config.settings import Settings


class _MappingSource(PydanticBaseSettingsSource):
    """A settings source over an already-read mapping (the TOML file)."""

    def __init__(self, settings_cls: type[BaseSettings], data: Mapping[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = dict(data)

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class ConfigError(Exception):
    """The configuration cannot be loaded; the message names the key and the problem."""


def load_settings(
    config_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Return the effective settings: ``overrides`` (CLI) > ``HJ212_*`` env > TOML > defaults.

    ``overrides`` is nested like the TOML file: ``{"listen": {"port": 0}}``.
    Raises ConfigError with one line per problem (values are never echoed).
    """
    file_data: dict[str, Any] = {}
    if config_file is not None:
        try:
            file_data = tomllib.loads(Path(config_file).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{config_file}: {exc}") from exc

    class _Loaded(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, _MappingSource(settings_cls, file_data))

    try:
        return _Loaded(**dict(overrides or {}))
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = str(err["msg"]).removeprefix("Value error, ")
            if not err["loc"]:  # a check across sections: the message names the keys
                lines.append(msg)
                continue
            path = ".".join(str(p) for p in err["loc"])
            env = "HJ212_" + "__".join(str(p) for p in err["loc"]).upper()
            lines.append(f"{path} (in the file, a flag, or env {env}): {msg}")
        raise ConfigError("\n".join(lines)) from None


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, secrets shown as ``**********``."""
    return settings.model_dump(mode="json")
