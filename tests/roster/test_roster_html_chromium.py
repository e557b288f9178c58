"""The HTML reports are single self-contained pages: loaded in headless Chromium, the
numbers read off the rendered DOM equal the hand-computed ones.

Needs Debian's ``chromium`` (``.ci/run`` installs it). Without it the test is skipped,
except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from rosterkit import T_ISO, add_readings, build_scenario, main, mn

CHROMIUM_TIMEOUT_S = 120
"""A guard against a hung browser, not a timing assertion."""


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is needed under CI=true (.ci/run installs it)", pytrace=False)
        pytest.skip("chromium is not installed")
    return path


def _dump_dom(page: Path, profile: Path) -> str:
    result = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=CHROMIUM_TIMEOUT_S,
        check=True,
    )
    return result.stdout


class _Page(HTMLParser):
    """Collects table rows (their data-* attributes and cells by data-field), ids, and
    every attribute that could load something."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[dict[str, str], dict[str, tuple[str, str]]]] = []
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.title = ""
        self._cell: tuple[str, str] | None = None
        self._text: list[str] = []
        self._in_title = False
        self._table: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.add(a["id"])
        for key in ("src", "href", "srcset", "poster", "data"):
            if key in a:
                self.links.append(a[key])
        if tag == "table":
            self._table = a.get("id")
        elif tag == "tr":
            self.rows.append(({**a, "table": self._table or ""}, {}))
        elif tag == "td" and "data-field" in a:
            self._cell = (a["data-field"], a.get("data-value", ""))
            self._text = []
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            field, value = self._cell
            self.rows[-1][1][field] = (value, "".join(self._text).strip())
            self._cell = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._text.append(data)
        if self._in_title:
            self.title += data


def _parse(dom: str) -> _Page:
    page = _Page()
    page.feed(dom)
    return page


def _self_contained(dom: str, page: _Page) -> None:
    assert page.links == []
    assert not re.search(r"url\(|@import|<script|<link|<img|<iframe", dom, re.IGNORECASE)
    assert "default-src 'none'" in dom


def test_coverage_page_in_chromium(
    pg_migrated_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build_scenario(pg_migrated_dsn, tmp_path / "roster.csv")
    capsys.readouterr()
    html = tmp_path / "coverage.html"
    argv = ["report", "coverage", "--as-of", T_ISO, "--format", "html", "-o", str(html)]
    assert main([*argv, "--dsn", pg_migrated_dsn]) == 0
    dom = _dump_dom(html, tmp_path / "profile")
    page = _parse(dom)
    _self_contained(dom, page)
    assert page.title.startswith("重点排污单位联网覆盖情况")
    assert {"chart-units", "chart-mns", "table-cities", "list-never", "list-unknown"} <= page.ids

    cities = {
        attrs.get("data-city", "province"): cells
        for attrs, cells in page.rows
        if attrs["table"] == "table-cities" and cells
    }
    fields = ("units", "units_full", "units_partial", "mns", "mns_online", "mns_never")
    shown = {c: tuple(int(cells[f][1]) for f in fields) for c, cells in cities.items()}
    assert shown["province"] == (15, 7, 2, 17, 9, 3)
    assert shown["南京市"] == (2, 1, 1, 3, 2, 0)
    assert shown["徐州市"] == (1, 0, 0, 1, 0, 1)
    assert shown["宿迁市"] == (1, 0, 1, 2, 1, 0)
    assert shown["unknown"] == (1, 1, 0, 1, 1, 0)
    assert len(shown) == 15
    assert cities["province"]["online_rate"] == ("0.5294", "52.9%")
    assert cities["南京市"]["target"] == ("324", "324")

    counties = [
        (attrs["data-county"], cells["mns_online"][1])
        for attrs, cells in page.rows
        if attrs["table"] == "table-counties-南京市" and cells
    ]
    assert counties == [("鼓楼区", "1"), ("六合区", "1")]
    never = [a["data-mn"] for a, _ in page.rows if a["table"] == "list-never" and "data-mn" in a]
    assert never == [mn("XZ01"), mn("LYG01"), mn("YZ01")]
    unknown = [
        a["data-mn"] for a, _ in page.rows if a["table"] == "list-unknown" and "data-mn" in a
    ]
    assert unknown == ["UNK1"]
    # the chart's bar of 南京市 carries the same figures
    bar = re.search(r'<g class="bar"[^>]*data-city="南京市"[^>]*>', dom)
    assert bar is not None
    assert 'data-units-full="1"' in bar.group(0)
    assert 'data-target="324"' in bar.group(0)


def test_quality_page_in_chromium(
    pg_migrated_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build_scenario(pg_migrated_dsn, tmp_path / "roster.csv")
    add_readings(pg_migrated_dsn)
    capsys.readouterr()
    html = tmp_path / "quality.html"
    argv = ["report", "quality", "--from", "2024-03-14", "--to", "2024-03-14", "--as-of", T_ISO]
    assert main([*argv, "--format", "html", "-o", str(html), "--dsn", pg_migrated_dsn]) == 0
    dom = _dump_dom(html, tmp_path / "profile")
    page = _parse(dom)
    _self_contained(dom, page)
    assert "transmission rate = distinct hours with hourly (CN 2061) data" in dom
    rows = {
        attrs.get("data-city", "province"): cells
        for attrs, cells in page.rows
        if attrs["table"] == "table-cities" and cells
    }
    assert rows["province"]["transmission_rate"] == ("0.1458", "14.6%")
    assert rows["province"]["hours_received"] == ("56", "56")
    assert rows["南京市"]["realtime_completeness"] == ("0.2674", "26.7%")
    assert rows["淮安市"]["flagged_share"] == ("0.8571", "85.7%")
    mns = {
        attrs["data-mn"]: cells
        for attrs, cells in page.rows
        if attrs["table"] == "table-mns" and "data-mn" in attrs
    }
    assert mns[mn("NJ01")]["hours_received"] == ("20", "20")
    assert mns[mn("SQ02")]["transmission_rate"] == ("", "–")
