"""structlog set-up: JSON lines in production, a console renderer on a TTY.

Log volume is bounded by design (design.md section 7): one line per connection close and
per notable event, per-frame and per-batch lines only at debug. Every string value goes
through ``_mask_passwords`` so a ``PW=`` value never reaches the output, even inside an
excerpt of a rejected frame.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# PW=<anything up to a separator>; the separators of HJ 212 headers and CP.
_PW_RE = re.compile(r"(PW\s*=\s*)[^;,&\s]*", re.IGNORECASE)


def mask_text(text: str) -> str:
    """Replace every ``PW=`` value in ``text`` with ``***``."""
    return _PW_RE.sub(r"\1***", text) if "=" in text else text


def _mask_passwords(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = mask_text(value)
    for key in ("password", "pw", "PW"):
        if key in event_dict:
            event_dict[key] = "***"
    return event_dict


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog (and route stdlib logging of asyncpg/asyncio through it)."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _mask_passwords,
    ]
    if use_console:
        renderer: Any = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        logger_factory: Any = structlog.PrintLoggerFactory(file=sys.stderr)
    else:
        shared.append(structlog.processors.dict_tracebacks)
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        logger_factory = structlog.BytesLoggerFactory(file=sys.stderr.buffer)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=logger_factory,
        cache_logger_on_first_use=True,
    )
    # Third-party libraries log through the standard library; keep their warnings.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(message)s")


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
