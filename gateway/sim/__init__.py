"""A simulated fleet of HJ 212 data acquisition units, for load tests and benchmarks.

``FleetConfig`` -> ``make_fleet`` (who), ``schedule`` (when), ``content`` (what, with
deterministic values), ``client`` (real TCP connections behaving like DAUs),
``runner`` (one process or several), ``stats`` (what was sent, replied, and the
distinct rows the gateway should hold afterwards).
"""

from __future__ import annotations

from gateway.sim.client import MODES, STORM_STYLES, RunConfig, SliceRun
from gateway.sim.fleet import DeviceSpec, FleetConfig, make_fleet, parse_mix
from gateway.sim.runner import processes_needed, run_in_loop, run_processes
from gateway.sim.stats import SimStats, render_text, summary

__all__ = [
    "MODES",
    "STORM_STYLES",
    "DeviceSpec",
    "FleetConfig",
    "RunConfig",
    "SimStats",
    "SliceRun",
    "make_fleet",
    "parse_mix",
    "processes_needed",
    "render_text",
    "run_in_loop",
    "run_processes",
    "summary",
]
