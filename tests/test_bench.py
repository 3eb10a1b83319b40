"""`tradeguard bench --quick --json` on this machine: every SPEC §2 key, sane values.

Nothing here is timed: rates and latencies depend on the machine and on what
else runs on it. The run must finish, report every key, see every breach
it sent, and close nothing it did not breach.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tradeguard.tools.bench.run import render

RUN_TIMEOUT = 240  # a hang guard, not a performance target


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "tradeguard.cli", "bench", "--quick", "--json"],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def test_the_report_has_every_spec_key(report: dict[str, Any]) -> None:
    assert {"cores", "throughput", "latency_ms", "missed_breaches", "peak_rss_mb"} <= set(report)
    assert set(report["throughput"]) == {"frame_1", "frame_50"}
    for row in report["throughput"].values():
        assert set(row) == {"tradeguard_ticks_per_s", "baseline_ticks_per_s", "ratio"}
    assert {"offered_ticks_per_s", "p50", "p99", "max"} <= set(report["latency_ms"])


def test_the_figures_are_sane(report: dict[str, Any]) -> None:
    assert report["cores"] >= 1
    for row in report["throughput"].values():
        assert row["tradeguard_ticks_per_s"] > 0
        assert row["baseline_ticks_per_s"] > 0
        assert row["ratio"] > 0
    latency = report["latency_ms"]
    assert latency["offered_ticks_per_s"] > 0
    assert latency["breaches"] > 0
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    assert report["peak_rss_mb"] > 0


def test_every_breach_is_closed_and_nothing_else(report: dict[str, Any]) -> None:
    assert report["missed_breaches"] == 0
    assert report["unexpected_closes"] == 0


def test_the_table_shows_each_figure_against_its_target(report: dict[str, Any]) -> None:
    table = render(report)
    for row in report["throughput"].values():
        assert f"{row['tradeguard_ticks_per_s']:,}/s" in table
        assert f"{row['baseline_ticks_per_s']:,}/s" in table
    assert f"p99 {report['latency_ms']['p99']} ms" in table
    assert f"{report['cores']} cores" in table
    missed = dict(report, missed_breaches=1)
    assert "MISSED" in render(missed).split("missed breaches")[1].splitlines()[0]
