"""`tradeguard demo` as a newcomer runs it: a subprocess, its story, its summary, its exit code.

The demo checks its own claims as it tells them and exits non-zero when one
does not hold; these tests read what it printed, as the reader would.
"""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_TIMEOUT = 90  # the demo takes ~15 s; generous for a loaded 2-core machine


def summary_count(out: str, label: str) -> int:
    match = re.search(rf"^\s+{re.escape(label)}:\s+(\d+)\b", out, re.MULTILINE)
    assert match, f"no {label!r} line in the summary:\n{out}"
    return int(match.group(1))


@pytest.fixture(scope="module")
def demo_run() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tradeguard.cli", "demo"], cwd=ROOT, capture_output=True,
        text=True, encoding="utf-8", timeout=DEMO_TIMEOUT, check=False,
    )


def test_the_demo_exits_0_and_says_it_is_done(demo_run: subprocess.CompletedProcess[str]) -> None:
    assert demo_run.returncode == 0, demo_run.stdout + demo_run.stderr
    assert "every step happened as told" in demo_run.stdout
    # The story only: TradeGuard's log goes to a file, nothing to the terminal.
    assert demo_run.stderr == ""
    assert "Traceback" not in demo_run.stdout


def test_the_summary_has_one_stop_loss_close_a_reconnect_a_dns_fallback_and_a_restart(
    demo_run: subprocess.CompletedProcess[str],
) -> None:
    out = demo_run.stdout
    assert summary_count(out, "Stop-loss closes") == 1
    assert summary_count(out, "Feed reconnects") >= 1
    assert summary_count(out, "DNS fallbacks") >= 1
    assert summary_count(out, "Actor restarts") >= 1
    assert re.search(r"^\s+BOSCHLTD\s+long\s+10 at ₹735\.00 -> ₹6\d\d\.\d\d\s+stop_loss\b", out,
                     re.MULTILINE), out
    assert re.search(r"^\s+INFY\s+short\s+5 at ₹1,520\.00 -> .*emergency\b", out, re.MULTILINE)


def test_the_story_tells_each_step_as_it_happens(
    demo_run: subprocess.CompletedProcess[str],
) -> None:
    out = demo_run.stdout
    assert re.search(r"\(via fallback:127\.0\.0\.1:\d+\)", out)  # the ladder's own log line
    assert "alert> Price feed lost: feed.tradeguard.test" in out
    assert re.search(r"\[FALLBACK\] Using stale price for BOSCHLTD: ₹[\d.]+ \([\d.]+s old\)", out)
    assert "alert> Price feed restored: feed.tradeguard.test" in out
    assert "1 broker order" in out
    assert "A second close by hand is refused: 404" in out
    assert "Without the token: 401" in out
    assert "alert> CacheActor restarted" in out
    steps = re.findall(r"^\[\s*([\d.]+)s\] ", out, re.MULTILINE)
    assert len(steps) == 10, out  # the setting, eight chapters, the summary
    assert float(steps[-1]) <= 60.0


# --keep-running ---------------------------------------------------------------------


def _lines(stream: Iterator[str], into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


def test_keep_running_leaves_the_api_up_until_ctrl_c() -> None:
    # The child resets SIGINT itself: a test runner started in the background has it
    # ignored, and the ignore would be inherited.
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from tradeguard.cli import main; sys.exit(main(['demo', '--keep-running']))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, encoding="utf-8")
    try:
        assert proc.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True)
        reader.start()
        seen: list[str] = []
        while "New alerts and log lines appear below." not in "".join(seen):
            try:
                seen.append(lines.get(timeout=DEMO_TIMEOUT))
            except queue.Empty:
                pytest.fail("the demo never said it keeps running:\n" + "".join(seen))
        out = "".join(seen)
        url = re.search(r"status page\s+(http://127\.0\.0\.1:\d+)/", out)
        token = re.search(r"API token\s+(\S+)", out)
        assert url and token, out
        with urllib.request.urlopen(url.group(1) + "/healthz", timeout=10) as resp:
            assert resp.status == 200
        request = urllib.request.Request(
            url.group(1) + "/api/v1/positions", method="POST",
            data=b'{"symbol": "RELIANCE", "side": "long", "quantity": 1, '
                 b'"entry_price": 2950, "stop_loss": 2900}',
            headers={"Authorization": f"Bearer {token.group(1)}",
                     "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 201

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        reader.join(10)
        assert "Stopping." in "".join(seen) + "".join(lines.queue)
        assert proc.stderr is not None
        assert proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
