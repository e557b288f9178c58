"""Storage test helpers: packets built directly, entries, and a store per test."""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from datetime import UTC, datetime


def _install_protocol_stand_ins() -> None:
    """Minimal ``protocol.values`` / ``protocol.codes`` while those modules are not there.

    They follow the documented contract (parse_time_us: wall-clock text as if UTC, raising
    ProtocolError; parse_number: float or None; Profile.normalise_code). The real modules
    take over as soon as they exist.
    """
    from protocol.errors import ProtocolError, RejectReason

    if importlib.util.find_spec("protocol.values") is None:
        values = types.ModuleType("protocol.values")

        def parse_number(text: str) -> float | None:
            try:
                return float(text)
            except ValueError:
                return None

        def parse_time_us(text: str) -> int:
            if not re.fullmatch(r"\d{14}(\d{3})?", text):
                raise ProtocolError(RejectReason.BAD_TIME, text)
            try:
                d = datetime.strptime(text[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
            except ValueError as exc:
                raise ProtocolError(RejectReason.BAD_TIME, text) from exc
            ms = int(text[14:]) if len(text) == 17 else 0
            return int(d.timestamp()) * 1_000_000 + ms * 1000

        values.parse_number = parse_number  # type: ignore[attr-defined]
        values.parse_time_us = parse_time_us  # type: ignore[attr-defined]
        sys.modules["protocol.values"] = values

    if importlib.util.find_spec("protocol.codes") is None:
        codes = types.ModuleType("protocol.codes")
        aliases = {"011": "w01018", "060": "w21003", "B01": "w00000"}

        class Profile:
            def __init__(self, name: str) -> None:
                self.name = name

            def normalise_code(self, code: str, st: str | None) -> str | None:
                if code in aliases:
                    return aliases[code]
                return code if re.fullmatch(r"[wa]\d{5}", code) else None

        def get_profile(name: str) -> Profile:
            return Profile(name)

        codes.Profile = Profile  # type: ignore[attr-defined]
        codes.get_profile = get_profile  # type: ignore[attr-defined]
        sys.modules["protocol.codes"] = codes


_install_protocol_stand_ins()
