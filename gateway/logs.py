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
        # Tracebacks as data, without each frame's local variables: a local may hold a
        # device password or a DSN, and masking only sees the event's own values.
        shared.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        logger_factory = structlog.BytesLoggerFactory(file=sys.stderr.buffer)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=logger_factory,
        cache_logger_on_first_use=True,
    )
    # storage/ and third-party libraries log through the standard library: their records
    # get the same processors and renderer (one JSON object per line in production), with
    # the logger's name. Their warnings and errors are kept.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _text_renderer(renderer),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)


def _text_renderer(renderer: Any) -> Any:
    """The renderer for stdlib records: the JSON renderer gives bytes, a handler wants text."""

    def render(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> str:
        out = renderer(logger, method, event_dict)
        return out.decode() if isinstance(out, bytes) else str(out)

    return render


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
