"""Per-city Prometheus gauges from the cached coverage snapshot."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
from prometheus_client import CollectorRegistry, generate_latest
from rosterkit import S, T, build_scenario

from gateway.coverage_metrics import CoverageCache, CoverageCollector

CITIES = (
    "南京市", "无锡市", "徐州市", "常州市", "苏州市", "南通市", "连云港市",
    "淮安市", "盐城市", "扬州市", "镇江市", "泰州市", "宿迁市", "unknown",
)  # fmt: skip


def _samples(registry: CollectorRegistry) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def test_nothing_before_the_first_refresh() -> None:
    registry = CollectorRegistry()
    registry.register(CoverageCollector(CoverageCache().get))
    assert _samples(registry) == {}


def test_city_gauges(pg_migrated_dsn: str, tmp_path: Path) -> None:
    build_scenario(pg_migrated_dsn, tmp_path / "roster.csv")
    cache = CoverageCache(clock=lambda: T)

    async def refresh() -> None:
        conn = await asyncpg.connect(pg_migrated_dsn)
        try:
            await cache.refresh(conn)
        finally:
            await conn.close()

    asyncio.run(refresh())
    registry = CollectorRegistry()
    registry.register(CoverageCollector(cache.get, clock=lambda: T + 42 * S))
    samples = _samples(registry)

    for name in ("mns", "units", "mns_online", "mns_silent", "mns_never_seen", "units_networked"):
        labels = {k for k in samples if k.startswith(f"hj212_roster_{name}{{")}
        assert labels == {f'hj212_roster_{name}{{city="{c}"}}' for c in CITIES}
    assert samples['hj212_roster_mns{city="南京市"}'] == 3
    assert samples['hj212_roster_mns_online{city="南京市"}'] == 2
    assert samples['hj212_roster_mns_silent{city="南京市"}'] == 1
    assert samples['hj212_roster_units_networked{city="南京市"}'] == 1
    assert samples['hj212_roster_mns_never_seen{city="徐州市"}'] == 1
    assert samples['hj212_roster_mns_online{city="宿迁市"}'] == 1
    assert samples['hj212_roster_mns_silent{city="宿迁市"}'] == 1
    assert samples['hj212_roster_mns{city="unknown"}'] == 1
    assert samples['hj212_roster_mns{city="常州市"}'] == 1
    assert sum(samples[f'hj212_roster_mns_online{{city="{c}"}}'] for c in CITIES) == 9
    assert samples["hj212_unregistered_mns"] == 1
    assert samples["hj212_coverage_snapshot_age_seconds"] == 42
