"""What each platform-to-device command expects back, and how its data area is laid out.

Pure functions over protocol.md 6.3 (exchange patterns) and 6.4 (return codes); no clock
(the caller passes the time), no I/O.

Patterns:

- ``set``: request -> 9011 (QnRtn) -> 9012 (ExeRtn). 1000, 1012, 1062, 1064, 1072, the
  2011/2021 "start" requests, 3011-3016, 3021, and the provisional 2025 settings.
- ``get``: request -> 9011 -> an answer with the same CN and QN -> 9012. 1011, 1061, 1063,
  3017-3020 (and the 2005 reads 1021/1031/1041).
- ``history``: request (BeginTime, EndTime) -> 9011 -> uploads of the same CN, each with
  a fresh QN (split or not, each acked with 9014 by the normal upload path) -> 9012.
  2031, 2041, 2051, 2061, 3020 logs, and the provisional 2013, 2052, 2062 and the 2025
  electricity history (2011 with BeginTime).
- ``notify``: 2012, 2022 -> 9013.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from protocol import CommandParam, format_time_ms

SET: Final = "set"
GET: Final = "get"
HISTORY: Final = "history"
NOTIFY: Final = "notify"

HISTORY_CNS: Final = frozenset({"2031", "2041", "2051", "2061", "2013", "2052", "2062"})
GET_CNS: Final = frozenset(
    {"1011", "1061", "1063", "3017", "3018", "3019", "3020", "1021", "1031", "1041"}
)
NOTIFY_CNS: Final = frozenset({"2012", "2022"})
# CNs that become history requests when given a time range (3020 logs; 2025 electricity).
RANGED_CNS: Final = frozenset({"2011", "3020"})
SET_TIME_CN: Final = "1012"
SET_PASSWORD_CN: Final = "1072"  # noqa: S105 - a command code, not a secret
SET_KEY_CN: Final = "1014"

# One word per return code for the ``reason`` column (protocol.md 6.4); unknown codes
# (both tables are extensible) give ``qn_rtn_<n>`` / ``exe_rtn_<n>``.
QN_RTN_REASONS: Final[dict[int, str]] = {
    2: "refused",
    3: "wrong_password",
    4: "wrong_mn",
    5: "wrong_st",
    6: "wrong_flag",
    7: "wrong_qn",
    8: "unsupported_cn",
    9: "crc_error",
    100: "unknown_error",
}
EXE_RTN_REASONS: Final[dict[int, str]] = {
    2: "execution_failed",
    3: "bad_conditions",
    4: "device_timeout",
    5: "busy",
    6: "fault",
    100: "no_data",
}


def pattern_for(cn: str, params: Mapping[str, str]) -> str:
    """set, get, history or notify (see the module docstring)."""
    if cn in NOTIFY_CNS:
        return NOTIFY
    if cn in HISTORY_CNS or (cn in RANGED_CNS and "BeginTime" in params):
        return HISTORY
    if cn in GET_CNS:
        return GET
    return SET


def qn_rtn_reason(code: int) -> str:
    return QN_RTN_REASONS.get(code, f"qn_rtn_{code}")


def exe_rtn_outcome(pattern: str, code: int) -> tuple[str, str | None]:
    """(state, reason) for a 9012: 1 is done; 100 (no data) is done for reads and history
    fetches, where it is a complete answer; anything else failed."""
    if code == 1 or (code == 100 and pattern in (GET, HISTORY)):
        return "done", None
    return "failed", EXE_RTN_REASONS.get(code, f"exe_rtn_{code}")


def with_defaults(cn: str, params: Mapping[str, str], local_now_ms: int) -> dict[str, str]:
    """The parameters to send: a 1012 without ``SystemTime`` gets the time of sending
    (``local_now_ms``: the device zone's wall clock, milliseconds since 1970 read as UTC),
    14 digits (field-quirks Q20)."""
    out = dict(params)
    if cn == SET_TIME_CN and not out.get("SystemTime"):
        out["SystemTime"] = format_time_ms(local_now_ms)[:14]
    return out


def ordered(spec: Sequence[CommandParam], params: Mapping[str, str]) -> list[tuple[str, str]]:
    """``params`` in the order of the CN's parameter table (the standard's order; a JSON
    object does not keep one); keys the table does not know come last, where
    ``protocol.command`` refuses them."""
    rank: dict[str, int] = {}
    for i, p in enumerate(spec):
        rank.setdefault(p.param, i)
    last = len(spec)

    def key(item: tuple[str, str]) -> int:
        name = item[0]
        if name in rank:
            return rank[name]
        if "-" in name:
            return rank.get("*-" + name.partition("-")[2], last)
        return last

    return sorted(params.items(), key=key)


def parse_code(text: str | None) -> int | None:
    """A QnRtn / ExeRtn value, or None when absent or not a number."""
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.isdigit() and text.isascii() and len(text) <= 6 else None
