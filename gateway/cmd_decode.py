"""``hj212-gateway decode``: captured bytes in, one JSON object per frame out (JSON Lines).

Needs nothing but the protocol package: no configuration, no database, no logging setup.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import orjson

from protocol import (
    CrcVariant,
    Frame,
    FrameBuffer,
    ProtocolError,
    Rejected,
    decode,
    packet_to_json,
    rejected_to_json,
)

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2

_VARIANTS = ("hj212", "modbus", "modbus_swapped")

EPILOG = """\
Input: a raw byte capture (frames back to back, CR LF tails), or frames one per line as
pasted from a log (a line may lack its CR LF; LF or CR LF line ends both work).

Output, one JSON object per frame, in input order:
  accepted  {"ok": true, "version": "2017", "qn": ..., "st": ..., "cn": ..., "mn": ...,
             "flag": 5, "ack_requested": true, "pnum": null, "pno": null,
             "cp": {"DataTime": "20240315103000"},
             "data": {"w01018": {"Rtd": 35.6, "Flag": "N", "SampleTime": "20240315100000"}},
             "quirks": [], "crc_variant": "hj212"}
            Decimal text becomes a number, time fields (SampleTime ...) stay text, empty
            values are null, //log text// is given without the slashes.
  --raw     adds "data_raw": the same code -> field shape with every value as the text
            received (e.g. "035.20" next to the number 35.2 in "data").
  rejected  {"ok": false, "reason": "crc_mismatch", "offset": 1234, "excerpt": "##0130QN=..."}
            offset = byte offset in the input; the excerpt is escaped and password-masked.
The password (PW, NewPW) is never printed.

Exit status: 0 every frame decoded, 1 some input was rejected, 2 usage error.

Examples:
  hj212-gateway decode capture.bin
  hj212-gateway decode frames.txt --raw | jq .data
  tail -n 100 gateway.log | grep -o '##.*' | hj212-gateway decode -
  hj212-gateway decode --strict --crc-variant hj212 modbus_swapped capture.bin
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "decode",
        help="decode captured HJ 212 bytes to JSON Lines",
        description="Decode captured HJ 212 frames and print one JSON object per frame.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", nargs="?", default="-", help="capture file, or - for stdin")
    parser.add_argument(
        "--raw", action="store_true", help="also print every value's raw text (data_raw)"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="reject what lenient mode accepts as a quirk (lower-case or short CRC, "
        "repaired length, missing tail, ...)",
    )
    parser.add_argument(
        "--crc-variant",
        dest="crc_variants",
        action="extend",
        nargs="+",
        choices=_VARIANTS,
        metavar="{hj212,modbus,modbus_swapped}",
        help="CRC variants to accept (default: hj212)",
    )
    parser.set_defaults(func=run)


def _read(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    return Path(name).read_bytes()


def _is_line_mode(data: bytes) -> bool:
    # A raw capture ends every frame with CR LF; any bare LF means one frame per line.
    lf = data.count(b"\n")
    return lf > 0 and lf != data.count(b"\r\n")


def _records(data: bytes, framer_kwargs: dict[str, object]) -> Iterable[Frame | Rejected]:
    if not _is_line_mode(data):
        framer = FrameBuffer(**framer_kwargs)  # type: ignore[arg-type]
        yield from framer.feed(data)
        yield from framer.finish()
        return
    offset = 0
    for line in data.splitlines(keepends=True):
        start = offset
        offset += len(line)
        content = line.rstrip(b"\r\n")
        stripped = content.lstrip(b" \t")
        start += len(content) - len(stripped)
        stripped = stripped.rstrip(b" \t")
        if not stripped:
            continue
        framer = FrameBuffer(**framer_kwargs)  # type: ignore[arg-type]
        for item in [*framer.feed(stripped + b"\r\n"), *framer.finish()]:
            if isinstance(item, Rejected):
                # Show only the line's own bytes, not the CR LF added to frame it.
                own = item.raw[: len(stripped) - item.offset]
                yield dataclasses.replace(item, raw=own, offset=start + item.offset)
            else:
                yield dataclasses.replace(item, offset=start + item.offset)


def run(args: argparse.Namespace) -> int:
    try:
        data = _read(args.file)
    except OSError as exc:
        print(f"hj212-gateway decode: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    variants = frozenset(CrcVariant(v) for v in (args.crc_variants or ["hj212"]))
    lenient = not args.strict
    framer_kwargs: dict[str, object] = {"lenient": lenient, "accept_variants": variants}
    failures = 0
    try:
        failures = _emit(_records(data, framer_kwargs), lenient=lenient, raw=args.raw)
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    return EXIT_FAILURES if failures else EXIT_OK


def _emit(records: Iterable[Frame | Rejected], *, lenient: bool, raw: bool) -> int:
    failures = 0
    write = sys.stdout.write
    for item in records:
        obj: dict[str, object]
        if isinstance(item, Frame):
            try:
                obj = packet_to_json(decode(item, lenient=lenient), raw_values=raw)
            except ProtocolError as exc:
                failures += 1
                obj = rejected_to_json(
                    Rejected(exc.reason, item.raw, item.offset, exc.detail, item.crc_variant)
                )
        else:
            failures += 1
            obj = rejected_to_json(item)
        write(orjson.dumps(obj).decode("utf-8") + "\n")
    sys.stdout.flush()
    return failures
