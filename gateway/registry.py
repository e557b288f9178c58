"""Admitting devices: the registry cache and the three auth policies (issue: auth.policy).

``open`` stores every device (the default for a first run). ``registry`` admits only
MNs in ``hj212.device`` that are enabled and send the recorded password; a device with no
password on record is admitted on its MN and its first password is recorded.
``quarantine`` admits registered devices like ``registry`` and archives the frames of
unknown MNs with reason ``quarantine`` (replied to normally, no value rows) until an
operator runs ``hj212-gateway device approve MN``.

The registry is read into memory (12,000 rows is ~2 MB) and refreshed every
``auth.refresh_s`` so edits made with ``hj212-gateway device`` take effect without a
restart. Passwords are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
from enum import StrEnum

from storage.base import DeviceAuth


class Verdict(StrEnum):
    """The outcome of admitting one packet; the non-OK values are metric labels."""

    OK = "ok"
    FIRST_PASSWORD = "first_password"  # noqa: S105 - a verdict name, not a secret
    """Registered without a password: admitted, and this password is recorded."""
    QUARANTINE = "quarantine"
    """Unknown MN under the quarantine policy: archived apart, replied to."""
    UNKNOWN_MN = "unknown_mn"
    DISABLED = "disabled"
    BAD_PASSWORD = "bad_password"  # noqa: S105 - a verdict name, not a secret


REFUSED = frozenset({Verdict.UNKNOWN_MN, Verdict.DISABLED, Verdict.BAD_PASSWORD})


class DeviceRegistry:
    """The in-memory copy of the registry rows the gateway needs."""

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.devices: dict[str, DeviceAuth] = {}
        self.loaded = False

    def replace(self, rows: list[DeviceAuth]) -> None:
        self.devices = {r.mn: r for r in rows}
        self.loaded = True

    def get(self, mn: str) -> DeviceAuth | None:
        return self.devices.get(mn)

    def admit(self, mn: str, password: str | None) -> Verdict:
        """Decide whether a packet from ``mn`` with ``password`` may be stored."""
        if self.policy == "open":
            return Verdict.OK
        device = self.devices.get(mn)
        if device is None:
            return Verdict.QUARANTINE if self.policy == "quarantine" else Verdict.UNKNOWN_MN
        if not device.enabled:
            return Verdict.DISABLED
        if device.password is None:
            return Verdict.FIRST_PASSWORD if password else Verdict.OK
        if password is None or not hmac.compare_digest(
            device.password.encode("utf-8"), password.encode("utf-8")
        ):
            return Verdict.BAD_PASSWORD
        return Verdict.OK

    def password_recorded(self, mn: str, password: str) -> None:
        device = self.devices.get(mn)
        if device is not None and device.password is None:
            self.devices[mn] = device._replace(password=password)

    def allows_variant(self, mn: str, variant: str) -> bool:
        device = self.devices.get(mn)
        return device is not None and device.enabled and variant in device.crc_variants
