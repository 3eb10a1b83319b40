"""`tradeguard chaos`: every kind of fault injected under load, and every invariant held.

The default suite runs a short chaos run (about a minute); `pytest --soak`
also runs a long one (TRADEGUARD_SOAK_SECONDS, default ten minutes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

SHORT = 40.0
SEED = 1


def chaos(duration: float, seed: int) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "tradeguard.cli", "chaos", "--duration", str(duration),
         "--seed", str(seed), "--json"],
        capture_output=True, text=True, timeout=duration + 240, check=False)
    assert result.returncode in (0, 1), result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def assert_survived(report: dict[str, Any]) -> None:
    assert report["violations"] == []
    for kind, counts in report["faults"].items():
        assert counts["injected"] >= 1, f"{kind} was never injected"
        assert counts["survived"] == counts["injected"], f"{kind}: {counts}"
    assert report["crossings"] > 0
    assert report["emergency_closes"] > 0
    assert report["actor_restarts"] >= 2


def test_a_short_chaos_run_breaks_everything_and_every_invariant_holds() -> None:
    assert_survived(chaos(SHORT, SEED))


@pytest.mark.soak
def test_a_long_chaos_run_keeps_every_invariant() -> None:
    assert_survived(chaos(float(os.environ.get("TRADEGUARD_SOAK_SECONDS", "600")), SEED + 1))


def test_a_critical_folded_by_the_notifier_counts_as_delivered() -> None:
    """The policy sends criticals of one kind as one message: the newest whole, the
    others' headlines under "Also:". The chaos check must read both as deliveries."""
    from tradeguard.tools.chaos.checks import _also, _one_line

    message = ("CRITICAL: A: close FAILED (x2)\nError: x\nAlso:\n"
               "CRITICAL: B: close FAILED\nCRITICAL: C: close FAILED (x3)")
    assert _one_line(message) == "CRITICAL: A: close FAILED | Error: x"
    assert _also(message) == ["CRITICAL: B: close FAILED", "CRITICAL: C: close FAILED"]
    assert _also("CRITICAL: A: blind\nLast price 1") == []
