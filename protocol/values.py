"""Value helpers: decimal text to numbers, HJ 212 time stamps to integers, and back.

Times: HJ 212 writes wall-clock times as ``YYYYMMDDhhmmss`` (14 digits) or with
milliseconds ``YYYYMMDDhhmmsszzz`` (17 digits, field-quirks Q13). They carry no zone.
``parse_time_us`` reads them as if they were UTC and returns microseconds since
1970-01-01; the caller subtracts the device zone's offset (Asia/Shanghai: +8 h). It runs
once per packet on the hot path, so it avoids ``datetime.strptime`` (about 10x slower)
and computes the day number directly (days-from-civil, proleptic Gregorian calendar).
"""

from __future__ import annotations

from typing import Final

from protocol.errors import ProtocolError, RejectReason

__all__ = [
    "TIME_FIELDS",
    "format_time_ms",
    "parse_number",
    "parse_time_us",
    "unwrap_text",
]

TIME_FIELDS: Final[frozenset[str]] = frozenset(
    {
        # CP keys (HJ 212-2017 Table 4).
        "DataTime",
        "SystemTime",
        "BeginTime",
        "EndTime",
        "RestartTime",
        # Field suffixes: ``w01018-SampleTime`` (Table 4), ``-CompleteTime`` (2025, section 12).
        "SampleTime",
        "CompleteTime",
    }
)
"""Names (plain CP keys or ``code-Field`` suffixes) whose values are 14/17-digit times.

``CstartTime`` (hhmmss) and ``i13006-Info`` (a time carried as information) are not in
the set: they are not 14/17-digit stamps or are information values kept as text."""

# Characters a decimal number may contain; anything else (letters, '_', exponent) means
# "not a number" even where float() would accept it ("nan", "1e5", "1_0").
_NOT_NUMERIC: Final = str.maketrans("", "", "0123456789+-. \t")

_US_PER_DAY: Final = 86_400_000_000
_DAYS_BEFORE_MONTH: Final = (0, 0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)
_MONTH_DAYS: Final = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def parse_number(text: str) -> float | None:
    """Decimal text to float, leniently: sign, leading zeros and surrounding spaces are
    fine (``" -035.20 "``); empty or non-numeric text gives None. Never raises."""
    if not text or not text.isascii() or text.translate(_NOT_NUMERIC):
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _days_from_civil(year: int, month: int, day: int) -> int:
    # Days since 1970-01-01 of a proleptic Gregorian date.
    y = year - 1
    days = y * 365 + y // 4 - y // 100 + y // 400 + _DAYS_BEFORE_MONTH[month] + day - 1
    if month > 2 and _is_leap(year):
        days += 1
    return days - 719_162  # days from 0001-01-01 to 1970-01-01


# Day numbers of recently seen dates (``YYYYMMDD`` -> days since 1970-01-01). A fleet
# reports a handful of distinct dates at a time, so a small cache turns the calendar
# arithmetic into one dict lookup. Bound: 4,096 dates is over 11 years of distinct days,
# far more than live traffic needs; the cache is cleared (not evicted one by one) when full,
# which keeps it bounded whatever dates a device sends.
DAY_CACHE_ENTRIES: Final = 4096
_day_cache: dict[str, int] = {}
# Whole time stamps recently parsed. Devices on the same upload grid share DataTime texts
# and a replayed or resent packet repeats them; 4,096 entries (~0.5 MB) cover one 30 s
# round of a large fleet's distinct times, cleared when full like the day cache.
TIME_CACHE_ENTRIES: Final = 4096
_time_cache: dict[str, int] = {}


MIN_YEAR: Final = 1970
"""Earliest year a device time may carry. A DAU whose clock was reset reads 1970 or 2000;
years before are corruption, and the stores' time types (SQLite's ISO text through
Python's datetime, after the zone offset is taken off) cannot hold year 1."""


def parse_time_us(text: str) -> int:
    """``YYYYMMDDhhmmss`` or ``YYYYMMDDhhmmsszzz`` to microseconds since 1970-01-01,
    reading the wall clock as if it were UTC. Anything else raises
    ``ProtocolError(BAD_TIME)``."""
    us = _time_cache.get(text)
    if us is not None:
        return us
    us = _parse_time_us(text)
    if len(_time_cache) >= TIME_CACHE_ENTRIES:
        _time_cache.clear()
    _time_cache[text] = us
    return us


def _parse_time_us(text: str) -> int:
    n = len(text)
    if n not in (14, 17) or not text.isdigit() or not text.isascii():
        raise ProtocolError(RejectReason.BAD_TIME, f"not 14 or 17 digits: {text[:20]!r}")
    date = text[:8]
    days = _day_cache.get(date)
    if days is None:
        year = int(date[:4])
        month = int(date[4:6])
        day = int(date[6:])
        if (
            year < MIN_YEAR
            or not 1 <= month <= 12
            or day < 1
            or (day > _MONTH_DAYS[month] and not (month == 2 and day == 29 and _is_leap(year)))
        ):
            raise ProtocolError(RejectReason.BAD_TIME, f"not a valid date: {text!r}")
        days = _days_from_civil(year, month, day)
        if len(_day_cache) >= DAY_CACHE_ENTRIES:
            _day_cache.clear()
        _day_cache[date] = days
    hour, rest = divmod(int(text[8:14]), 10_000)
    minute, second = divmod(rest, 100)
    if hour > 23 or minute > 59 or second > 59:
        raise ProtocolError(RejectReason.BAD_TIME, f"not a valid time of day: {text!r}")
    us = days * _US_PER_DAY + (hour * 3600 + minute * 60 + second) * 1_000_000
    if n == 17:
        us += int(text[14:]) * 1000
    return us


def format_time_ms(ms: int) -> str:
    """Milliseconds since 1970-01-01 (a wall clock read as UTC) to ``YYYYMMDDhhmmsszzz``."""
    days, rem = divmod(ms, 86_400_000)
    # civil-from-days (H. Hinnant's algorithm), valid for the proleptic Gregorian calendar.
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    rem, milli = divmod(rem, 1000)
    rem, second = divmod(rem, 60)
    hour, minute = divmod(rem, 60)
    return f"{year:04d}{month:02d}{day:02d}{hour:02d}{minute:02d}{second:02d}{milli:03d}"


def unwrap_text(value: str) -> str:
    """``//text//`` (a log value, protocol.md 3.2) without its slashes; other text as is."""
    if len(value) >= 4 and value.startswith("//") and value.endswith("//"):
        return value[2:-2]
    return value
