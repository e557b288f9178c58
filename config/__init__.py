"""Configuration: pydantic-settings models and the loader. A leaf: imports nothing of ours."""

from config.loader import ConfigError, load_settings, masked_dump
from config.settings import (
    AckConfig,
    AuthConfig,
    ListenConfig,
    LogConfig,
    MetricsConfig,
    ProtocolConfig,
    Settings,
    ShutdownConfig,
    StorageConfig,
)

__all__ = [
    "AckConfig",
    "AuthConfig",
    "ConfigError",
    "ListenConfig",
    "LogConfig",
    "MetricsConfig",
    "ProtocolConfig",
    "Settings",
    "ShutdownConfig",
    "StorageConfig",
    "load_settings",
    "masked_dump",
]
