"""gateway.logs: one JSON object per line, from structlog and from the standard library
(storage/ and third-party libraries log there), passwords masked, no local variables.
Run in a process of its own: logging configuration is global."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import logging
from gateway.logs import configure_logging, get_logger
configure_logging("info", "json")
logging.getLogger("storage.writer").warning("dropped %d rows of %s", 2, "PW=secret;MN=1")
get_logger("hj212.gateway").info("connection closed", excerpt="QN=1;PW=123456;MN=2")
password = "hunter2"  # a local of the failing frame: never rendered
try:
    raise ValueError("bad " + str(len(password)))
except ValueError:
    logging.getLogger("storage.writer").exception("write failed")
"""


def test_stdlib_records_are_json_lines_with_passwords_masked() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True
    )
    first, second, third = (json.loads(line) for line in done.stderr.splitlines())
    assert first["event"] == "dropped 2 rows of PW=***;MN=1"
    assert (first["level"], first["logger"]) == ("warning", "storage.writer")
    assert second["excerpt"] == "QN=1;PW=***;MN=2"
    assert third["level"] == "error"
    assert "ValueError" in json.dumps(third["exception"])
    assert "hunter2" not in done.stderr
    assert "secret" not in done.stderr
