"""``hj212-gateway device add|set|disable|approve``: edit the registry one MN at a time.

Works on either store (``--dsn`` for PostgreSQL, else the SQLite file). A running gateway
picks the change up within ``auth.refresh_s``. ``--json`` prints the device row after the
change; the password is never printed (``has_password`` instead).

``approve`` admits a device that was quarantined (``auth.policy = quarantine``): it
creates or enables its registry row, decodes every quarantined frame of that MN and
stores its values, then marks those frames approved.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from gateway.app import utc_offset_us
from gateway.settings_cli import add_config_flag, add_storage_flags, settings_from
from protocol import (
    CrcVariant,
    Frame,
    FrameBuffer,
    ProtocolError,
    decode,
    get_profile,
    profile_for_version,
)
from storage import Entry, StorageError, Store, entry_for_packet, open_store
from storage.base import FrameRow

EXIT_OK, EXIT_FAILURES, EXIT_USAGE = 0, 1, 2
# Quarantined frames decoded per store.write call during approval (one transaction each).
APPROVE_BATCH = 500


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("mn", help="the device's MN, exactly as it sends it")
    p.add_argument("--json", action="store_true", help="print the resulting row as JSON")
    add_config_flag(p)
    add_storage_flags(p)


def _fields(p: argparse.ArgumentParser) -> None:
    p.add_argument("--password", help="the device's access password (PW)")
    p.add_argument("--profile", help="code-table profile: 2005, 2017, 2025, hebei, ...")
    p.add_argument(
        "--crc-variant",
        action="append",
        choices=[v.value for v in CrcVariant if v is not CrcVariant.NONE],
        help="also accept this CRC algorithm from the device (repeatable)",
    )
    p.add_argument("--unit-name", help="discharge unit name")
    p.add_argument("--city")
    p.add_argument("--county")
    p.add_argument("--park")
    p.add_argument("--outlet-type", help="water, gas, process or electricity")
    p.add_argument("--rtd-interval-s", type=int, help="expected real-time upload interval")
    p.add_argument("--minute-interval-s", type=int, help="expected minute-data interval")


def register_add(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = actions.add_parser(
        "add",
        help="register a device (or update it when it exists)",
        epilog="example:\n  hj212-gateway device add 88888880000000000000A001 --password 123456",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    _fields(p)
    p.set_defaults(func=lambda a: _run(a, "add"))


def register_set(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = actions.add_parser(
        "set",
        help="change fields of a registered device",
        epilog="example:\n  hj212-gateway device set 88888880000000000000A001 --crc-variant modbus",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    _fields(p)
    p.add_argument("--enable", action="store_true", help="enable a disabled device")
    p.set_defaults(func=lambda a: _run(a, "set"))


def register_disable(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = actions.add_parser("disable", help="refuse a device's frames from now on")
    _common(p)
    p.set_defaults(func=lambda a: _run(a, "disable"))


def register_approve(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = actions.add_parser(
        "approve",
        help="admit a quarantined device and store its quarantined data",
        epilog="example:\n  hj212-gateway device approve 99999990000009 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    _fields(p)
    p.set_defaults(func=lambda a: _run(a, "approve"))


def _values(args: argparse.Namespace, action: str) -> dict[str, object]:
    values: dict[str, object] = {}
    for key in (
        "password", "profile", "unit_name", "city", "county", "park", "outlet_type",
        "rtd_interval_s", "minute_interval_s",
    ):  # fmt: skip
        value = getattr(args, key, None)
        if value is not None:
            values[key] = value
    if getattr(args, "crc_variant", None):
        values["crc_variants"] = sorted(set(args.crc_variant))
    if action in ("add", "approve") or getattr(args, "enable", False):
        values["enabled"] = True
    if action == "disable":
        values["enabled"] = False
    return values


def _run(args: argparse.Namespace, action: str) -> int:
    settings = settings_from(args)
    if settings is None:
        return EXIT_USAGE
    if getattr(args, "profile", None):
        try:
            get_profile(args.profile)
        except ProtocolError:
            print(f"hj212-gateway device: unknown profile {args.profile!r}", file=sys.stderr)
            return EXIT_USAGE
    try:
        result = asyncio.run(_apply(settings, args.mn, action, _values(args, action)))
    except StorageError as exc:
        print(f"hj212-gateway device {action}: {exc}", file=sys.stderr)
        return EXIT_FAILURES
    if result is None:
        print(f"hj212-gateway device {action}: no device {args.mn!r}", file=sys.stderr)
        return EXIT_FAILURES
    if args.json:
        print(json.dumps(result, ensure_ascii=False, default=str))
    else:
        row = result["device"]
        extra = (
            f"; {result['approved_frames']} quarantined frames stored"
            if ("approved_frames" in result)
            else ""
        )
        state = "enabled" if row.get("enabled") else "disabled"
        print(f"{action}: {args.mn} ({state}){extra}")
    return EXIT_OK


async def _apply(
    settings: Any, mn: str, action: str, values: dict[str, object]
) -> dict[str, Any] | None:
    store = open_store(settings.storage)
    await store.open()
    try:
        await store.migrate()
        if action in ("set", "disable") and await store.get_device(mn) is None:
            return None
        created = await store.upsert_device(mn, values)
        result: dict[str, Any] = {"action": action, "created": created}
        if action == "approve":
            result["approved_frames"] = await _approve(store, mn, settings)
        result["device"] = await store.get_device(mn)
        return result
    finally:
        await store.close()


async def _approve(store: Store, mn: str, settings: Any) -> int:
    """Store the values of every quarantined frame of ``mn``, then mark them approved."""
    offset = utc_offset_us(settings.protocol.timezone)
    device = await store.get_device(mn)
    profile_name = str(device.get("profile") or "") if device else ""
    frames = await store.quarantined(mn)
    entries: list[Entry] = []
    for received_at_us, raw in frames:
        framer = FrameBuffer(lenient=True, accept_variants=frozenset(CrcVariant))
        for item in framer.feed(raw):
            if not isinstance(item, Frame):
                continue
            try:
                packet = decode(item)
                profile = (
                    get_profile(profile_name)
                    if profile_name
                    else profile_for_version(packet.version)
                )
                placeholder = FrameRow(
                    received_at_us, "", 0, mn, None, None, None, True, None, (), b""
                )
                entry = entry_for_packet(packet, placeholder, utc_offset_us=offset, profile=profile)
            except ProtocolError:
                continue
            # The frame itself is archived already: store only its values.
            entries.append(Entry(None, entry.readings, entry.infos, entry.statuses))
        if len(entries) >= APPROVE_BATCH:
            await store.write(entries)
            entries = []
    if entries:
        await store.write(entries)
    return await store.release_quarantine(mn)
