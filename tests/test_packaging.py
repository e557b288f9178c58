"""Static checks of what cannot be run here: the compose file, the Dockerfile, the README."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from protocol import Quirk, RejectReason

ROOT = Path(__file__).resolve().parent.parent


def test_compose_runs_the_gateway_against_timescaledb() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["db"]["image"].startswith("timescale/timescaledb")
    gateway = services["gateway"]
    assert gateway["build"] == "."
    assert gateway["depends_on"]["db"]["condition"] == "service_healthy"
    dsn = gateway["environment"]["HJ212_STORAGE__DSN"]
    assert dsn.startswith("postgresql://")
    assert "@db:5432/" in dsn
    assert {"2121:2121", "9212:9212"} <= set(gateway["ports"])
    # The working directory (the local spool) is a volume: it outlives the container.
    assert "gwdata:/data" in gateway["volumes"]
    assert "gwdata" in compose["volumes"]


def test_dockerfile_is_multistage_nonroot_with_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    assert re.search(r"^USER (?!root|0)", text, re.M)
    assert re.search(r'^ENTRYPOINT \["hj212-gateway"\]', text, re.M)
    assert "HEALTHCHECK" in text
    assert "/healthz" in text


def test_readme_holds_the_two_commands_and_every_enum_value() -> None:
    text = (ROOT / "README.md").read_text()
    head = text[:1500]
    assert "make run" in head
    assert "make test" in head
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.M)
    assert re.search(r"^test:", makefile, re.M)
    for member in (*RejectReason, *Quirk):
        assert f"`{member.value}`" in text, member


def test_a_plain_install_holds_every_module_and_data_file(tmp_path: Path) -> None:
    """What ``pip install .`` (the Docker image) installs: the wheel must hold every module
    of the four packages, subpackages included, and the migrations and code tables."""
    import subprocess
    import sys
    import zipfile

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("hj212_gateway-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {
        str(p.relative_to(ROOT))
        for package in ("protocol", "gateway", "storage", "config")
        for pattern in ("**/*.py", "**/*.sql", "**/*.csv", "**/*.json")
        for p in (ROOT / package).glob(pattern)
    }
    assert wanted - names == set()
    assert any(n.startswith("gateway/commands/") for n in names)
