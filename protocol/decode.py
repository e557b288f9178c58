"""Data segment text to a ``Packet``: header fields, Flag bits, CP items.

Grammar (protocol.md 3.1-3.3): ``Key=Value`` header items separated by ``;`` (``,`` and a
missing ``;`` before ``CP=`` are tolerated and recorded), then ``CP=&&`` data ``&&``. The
data area is tokenised on ``;`` and ``,`` alike except inside ``//...//`` (log text may
contain ``; , =`` and Chinese), each token split at its first ``=``, each key at its first
``-`` into (code, field). Plain keys go to ``Packet.cp``; every ``code-Field`` item goes to
``Packet.data`` whether or not the code is known. Values are raw text, trimmed; ``//text//``
is given without its slashes.

The hot path (ASCII, no spaces, no log text) is one UTF-8 decode, one split of the header,
one replace + split of the data area and two ``partition`` calls per item.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from protocol.codes import get_profile
from protocol.errors import ProtocolError, Quirk, RejectReason
from protocol.records import CrcVariant, Frame, Packet, Record, new_packet, new_record
from protocol.values import TIME_FIELDS, parse_time_us

__all__ = ["decode", "decode_segment"]

# Version names by Flag >> 2 (protocol.md section 4; 2025 per section 12, provisional).
_VERSIONS: Final = ("2005", "2017", "2025")
_LOWER_KEYS: Final = {"qn": "QN", "st": "ST", "cn": "CN", "pw": "PW", "mn": "MN", "flag": "Flag"}
_LOWER_KEYS.update({"pnum": "PNUM", "pno": "PNO"})
# Longest PNUM/PNO value: 4 digits (HJ 212-2017 Table 3 width 9 incl. "PNUM=").
_MAX_PNUM_DIGITS: Final = 4
_NO_TIMES: Final[frozenset[str]] = frozenset()


def decode(frame: Frame, *, lenient: bool = True) -> Packet:
    """Decode a framed segment; the frame's quirks and CRC variant carry over."""
    return decode_segment(
        frame.segment,
        raw=frame.raw,
        quirks=frame.quirks,
        crc_variant=frame.crc_variant,
        lenient=lenient,
    )


def _text_of(segment: bytes, quirks: list[Quirk], lenient: bool) -> str:
    """Text of a segment that is not UTF-8: GBK/GB18030 (lenient), else BAD_ENCODING."""
    if not lenient:
        raise ProtocolError(RejectReason.BAD_ENCODING, "segment is not UTF-8")
    try:
        text = segment.decode("gb18030")
    except UnicodeDecodeError:
        raise ProtocolError(RejectReason.BAD_ENCODING, "neither UTF-8 nor GBK") from None
    quirks.append(Quirk.GBK_TEXT)
    return text


def _tokens(body: str) -> list[str]:
    """Split a data area on ``;`` and ``,`` except inside ``//...//`` values."""
    if "//" not in body:
        return body.replace(",", ";").split(";")
    tokens: list[str] = []
    i = 0
    size = len(body)
    while i <= size:
        eq = body.find("=", i)
        semi = body.find(";", i)
        comma = body.find(",", i)
        sep = min((s for s in (semi, comma) if s >= 0), default=size)
        if 0 <= eq < sep:
            v = eq + 1
            while v < size and body[v] in " \t":
                v += 1
            if body.startswith("//", v):
                # The value ends at the first "//" followed by (spaces and) a separator or
                # the end of the data area.
                j = v + 2
                while True:
                    close = body.find("//", j)
                    if close < 0:
                        break
                    after = close + 2
                    while after < size and body[after] in " \t":
                        after += 1
                    if after >= size or body[after] in ";,":
                        tokens.append(body[i:after])
                        i = after + 1
                        break
                    j = close + 1
                if close >= 0:
                    continue
        tokens.append(body[i:sep])
        i = sep + 1
    return tokens


def decode_segment(
    segment: bytes | bytearray | memoryview,
    *,
    raw: bytes = b"",
    quirks: tuple[Quirk, ...] = (),
    crc_variant: CrcVariant = CrcVariant.HJ212,
    lenient: bool = True,
) -> Packet:
    """Decode one data segment (the bytes the CRC covers) into a ``Packet``.

    Raises ``ProtocolError`` (BAD_SEGMENT, BAD_FLAG, BAD_PNUM, BAD_TIME, MISSING_FIELD,
    BAD_CN, BAD_ENCODING) and nothing else. ``lenient=False`` rejects the header irregularities
    the standard's own examples do not contain (``,`` between header fields, no ``;``
    before ``CP=``, text after the closing ``&&``, GBK text, unknown version bits).
    """
    found: list[Quirk] = list(quirks)
    if type(segment) is not bytes:
        segment = bytes(segment)
    if b"\x00" in segment:
        # Never part of HJ 212 text, and no database text column can hold it.
        raise ProtocolError(RejectReason.BAD_ENCODING, "NUL byte in the segment")
    try:
        text = segment.decode("utf-8")
    except UnicodeDecodeError:
        text = _text_of(segment, found, lenient)

    # -- split header / CP -------------------------------------------------------------
    cp_at = text.find(";CP=&&")
    if cp_at >= 0:
        head = text[:cp_at]
        body_start = cp_at + 6
    else:
        cp_at = text.find("CP=&&")
        if cp_at < 0:
            raise ProtocolError(RejectReason.BAD_SEGMENT, "no CP=&&")
        head = text[:cp_at]
        body_start = cp_at + 5
        before = head.rstrip(" \t")
        if before and before[-1] != ",":
            if not lenient:
                raise ProtocolError(RejectReason.BAD_SEGMENT, "no ';' before CP=")
            found.append(Quirk.HEADER_NO_SEMICOLON)
    close = text.rfind("&&")
    if close < body_start:
        raise ProtocolError(RejectReason.BAD_SEGMENT, "CP not closed by &&")
    body = text[body_start:close]
    if close + 2 < len(text):
        trailer = text[close + 2 :]
        if trailer.strip(" \t;,"):
            # e.g. "CP=&&&&;Flag=0" (field-quirks Q18): read the rest as header items.
            if not lenient:
                raise ProtocolError(RejectReason.BAD_SEGMENT, "text after the closing &&")
            head = head + ";" + trailer

    # -- header --------------------------------------------------------------------------
    if "," in head:
        if not lenient:
            raise ProtocolError(RejectReason.BAD_SEGMENT, "',' between header fields")
        found.append(Quirk.HEADER_COMMA)
        head = head.replace(",", ";")
    spaced_head = not head or " " in head or "\t" in head
    header = None if spaced_head else _fast_pairs(head, ";")
    if header is None:
        header = _header_items(head, found)

    get = header.get
    if lenient and ("CN" not in header or "MN" not in header or "Flag" not in header):
        # Keys spelled in another case (``flag=5``): matched as a fallback, recorded.
        lookup: dict[str, str] | None = None
        for key, value in header.items():
            canonical = _LOWER_KEYS.get(key.lower())
            if canonical is not None and canonical != key and canonical not in header:
                if lookup is None:
                    lookup = dict(header)
                lookup[canonical] = value
                found.append(Quirk.KEY_CASE)
        if lookup is not None:
            get = lookup.get
    cn = get("CN")
    mn = get("MN")
    if not cn:
        raise ProtocolError(RejectReason.MISSING_FIELD, "no CN")
    if len(cn) > 4 or not cn.isdigit() or not cn.isascii():
        raise ProtocolError(RejectReason.BAD_CN, f"not a code of 1 to 4 digits: {cn[:20]!r}")
    if not mn:
        raise ProtocolError(RejectReason.MISSING_FIELD, "no MN")
    qn = get("QN") or None
    if qn is None:
        found.append(Quirk.MISSING_QN)

    flag_text = get("Flag")
    flag: int | None
    if flag_text is None:
        flag = None
        version = "2005"
        found.append(Quirk.MISSING_FLAG)
    else:
        if not (flag_text.isdigit() and flag_text.isascii()) or len(flag_text) > 3:
            raise ProtocolError(RejectReason.BAD_FLAG, f"Flag={flag_text[:8]!r}")
        flag = int(flag_text)
        if flag > 255:
            raise ProtocolError(RejectReason.BAD_FLAG, f"Flag={flag}")
        bits = flag >> 2
        if bits < 3:
            version = _VERSIONS[bits]
        else:
            if not lenient:
                raise ProtocolError(RejectReason.BAD_FLAG, f"unknown version bits {bits}")
            version = f"v{bits}"
            found.append(Quirk.UNKNOWN_VERSION)

    pnum_text = get("PNUM")
    pno_text = get("PNO")
    pnum = None if pnum_text is None else _small_int(pnum_text, "PNUM")
    pno = None if pno_text is None else _small_int(pno_text, "PNO")

    # -- CP ------------------------------------------------------------------------------
    cp: dict[str, str] = {}
    data: dict[str, dict[str, str]] = {}
    records: list[Record] = []
    record_time: str | None = None
    record_us: int | None = None
    current = data
    several = False
    if body:
        # Field times (``SampleTime``...) are validated; skip the per-field check when the
        # data area has no time other than DataTime.
        times = TIME_FIELDS if body.count("Time=") > body.count("DataTime=") else _NO_TIMES
        pairs: Iterable[tuple[str, str]] | None = None
        if " " not in body and "\t" not in body and "//" not in body:
            # Hot path: every token is one key=value, so one replace + split gives
            # key, value, key, value ... (checked by counting separators).
            flat = body.replace(",", "=").replace(";", "=").split("=")
            if len(flat) == 2 * (body.count(";") + body.count(",") + 1):
                it = iter(flat)
                pairs = zip(it, it, strict=True)
        if pairs is None:
            pairs = _cp_items(body, found)
        for key, value in pairs:
            code, dash, field = key.partition("-")
            if dash:
                if not code or not field:
                    raise ProtocolError(RejectReason.BAD_SEGMENT, f"bad CP key {key!r}")
                if field in times and value:
                    if len(value) == 17:
                        found.append(Quirk.TIME_MS)
                    parse_time_us(value)
                fields = current.get(code)
                if fields is None:
                    current[code] = {field: value}
                else:
                    fields[field] = value
                continue
            if not key:
                raise ProtocolError(RejectReason.BAD_SEGMENT, "CP item without a key")
            if key == "DataTime":
                us = parse_time_us(value)
                if len(value) == 17:
                    found.append(Quirk.TIME_MS)
                if record_time is not None:
                    # A second DataTime starts a new record (protocol.md 3.2, defensive).
                    if not several:
                        several = True
                        found.append(Quirk.MULTIPLE_DATATIME)
                    records.append(new_record(record_time, current, record_us))
                    current = {}
                record_time, record_us = value, us
            elif key in times and value:
                if len(value) == 17:
                    found.append(Quirk.TIME_MS)
                parse_time_us(value)
            cp[key] = value
    if record_time is not None or current:
        records.append(new_record(record_time, current, record_us))
    if several:
        data = {}
        for record in records:
            for code, fields in record.data.items():
                merged = data.get(code)
                if merged is None:
                    data[code] = dict(fields)
                else:
                    merged.update(fields)

    # -- 2005 and 2017 codes for the same factor in one packet (field-quirks Q14) -------
    st = get("ST")
    if data:
        profile = None
        for code in data:
            if len(code) <= 3:
                if profile is None:
                    profile = get_profile("2017")
                alias = profile.normalise_code(code, st)
                if alias is not None and alias != code and alias in data:
                    found.append(Quirk.CODE_ALIAS_COLLISION)
                    break

    return new_packet(
        qn,
        st,
        cn,
        get("PW"),
        mn,
        flag,
        version,
        bool(flag is not None and flag & 1),
        bool(flag is not None and flag & 2),
        pnum,
        pno,
        header,
        cp,
        data,
        tuple(records),
        tuple(dict.fromkeys(found)) if found else (),
        crc_variant,
        raw,
    )


def _small_int(text: str, name: str) -> int:
    if not (text.isdigit() and text.isascii()) or len(text) > _MAX_PNUM_DIGITS:
        raise ProtocolError(RejectReason.BAD_PNUM, f"{name}={text[:8]!r}")
    return int(text)


def _fast_pairs(text: str, sep: str) -> dict[str, str] | None:
    """``k=v<sep>k=v...`` as a dict when every item has exactly one ``=`` and a key."""
    flat = text.replace(sep, "=").split("=")
    if len(flat) != 2 * (text.count(sep) + 1):
        return None
    it = iter(flat)
    items = dict(zip(it, it, strict=True))
    return None if "" in items else items


def _header_items(head: str, found: list[Quirk]) -> dict[str, str]:
    """The header items one by one: spaces trimmed (recorded), empty items skipped."""
    header: dict[str, str] = {}
    spaced = " " in head or "\t" in head
    for item in head.split(";"):
        key, eq, value = item.partition("=")
        if spaced:
            key2, value2 = key.strip(), value.strip()
            if key2 != key or value2 != value:
                found.append(Quirk.WHITESPACE)
            key, value = key2, value2
        if not eq:
            if key:
                raise ProtocolError(RejectReason.BAD_SEGMENT, f"header item without '=': {key!r}")
            continue
        if not key:
            raise ProtocolError(RejectReason.BAD_SEGMENT, "header item without a key")
        header[key] = value
    return header


def _cp_items(body: str, found: list[Quirk]) -> list[tuple[str, str]]:
    """The CP items one by one: log text kept whole and unwrapped, spaces trimmed and
    empty items skipped (both recorded)."""
    items: list[tuple[str, str]] = []
    spaced = " " in body or "\t" in body
    empty = False
    for token in _tokens(body):
        key, eq, value = token.partition("=")
        if spaced:
            key2, value2 = key.strip(), value.strip()
            if key2 != key or value2 != value:
                found.append(Quirk.WHITESPACE)
            key, value = key2, value2
        if not eq:
            if key:
                raise ProtocolError(RejectReason.BAD_SEGMENT, f"CP item without '=': {key!r}")
            empty = True
            continue
        if value[:2] == "//" and len(value) >= 4 and value[-2:] == "//":
            value = value[2:-2]
        items.append((key, value))
    if empty:
        found.append(Quirk.EMPTY_ITEM)
    return items
