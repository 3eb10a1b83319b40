"""`tradeguard bench` (SPEC §2): throughput, tick-to-order latency and memory on loopback.

The feed is `server`, a WebSocket server in a process of its own; the
service is the real System (`bench_guard`) with one open position on each of
208 symbols.

- Throughput: the same stream (1-tick frames, then 50-tick frames) goes to
  a bare websocket-client loop that parses each frame with the JSON parser
  TradeGuard uses and updates a dict (the baseline), and to the service,
  timed from the server's first byte until the monitor has evaluated the
  last tick. The median of the rounds counts.
- Latency: the server offers 10,000 ticks/s in 1-tick frames with a breach
  on a random positioned symbol every 100 ms, each timed from the server's
  send to the paper broker receiving the order (`time.monotonic()` on both
  sides, one clock on Linux). Then the same at full load: breaches inside a
  stream sent as fast as the service takes it. A breach without an order
  is missed.
- Decode (`decode`): TradeGuard's venue decoders against the official
  SDKs' own parsers on the same frames, in this process (`bench.decode`).
- Memory: peak RSS of this process (which hosts the service), and its
  growth from the end of the throughput runs to the end of the bench.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import websocket

from tradeguard.errors import TradeGuardError
from tradeguard.exits import EX_OK, EX_SOFTWARE
from tradeguard.feed.wire_json import JSON_PARSER, loads, subscribe_frame
from tradeguard.tools.bench import decode
from tradeguard.tools.bench.guard import GuardUnderTest, breach_price, logging_to, resident_mb
from tradeguard.tools.bench.server import FeedServer, Paced, Stream

SYMBOLS = 208
RATE = 10_000.0  # ticks/s offered in the latency run
BREACH_EVERY = 0.1  # seconds between breaches in the latency run
GUARD_PATH, BASELINE_PATH = "/guard", "/baseline"
JOB_TIMEOUT = 300.0
ORDER_WAIT = 10.0  # seconds a breach's order may take before it counts as missed
SEED = 20_260_107
TARGETS = {"frame_1": 0.6, "frame_50": 0.8, "p99_ms": 5.0, "decode": 10.0}


@dataclass(frozen=True)
class Plan:
    ticks: dict[int, int]  # ticks per throughput run, by ticks per frame
    rounds: int  # throughput runs of each kind
    latency_seconds: float
    saturated_breaches: int


FULL = Plan({1: 200_000, 50: 2_000_000}, rounds=3, latency_seconds=10.0, saturated_breaches=100)
QUICK = Plan({1: 20_000, 50: 200_000}, rounds=1, latency_seconds=2.0, saturated_breaches=10)


def run_bench(quick: bool, as_json: bool) -> int:
    try:
        report = measure(QUICK if quick else FULL)
    except TradeGuardError as exc:
        print(f"tradeguard bench: {exc}", file=sys.stderr)
        return EX_SOFTWARE
    print(json.dumps(report) if as_json else render(report))
    return EX_OK


def measure(plan: Plan) -> dict[str, Any]:
    """Run every part of the bench; the SPEC §2 object (with a few extra keys)."""
    prices = {f"SYM{i:03d}": round(50.0 + 11.5 * i, 2) for i in range(SYMBOLS)}
    order = random.Random(SEED).sample(sorted(prices), len(prices))  # noqa: S311
    paced = int(plan.latency_seconds / BREACH_EVERY)
    with tempfile.TemporaryDirectory(prefix="tradeguard-bench-") as tmp, \
            logging_to(Path(tmp) / "bench.log"), FeedServer() as server, \
            GuardUnderTest(Path(tmp), server.url(GUARD_PATH), prices) as guard:
        bench = _Bench(server, guard, prices)
        throughput = {f"frame_{frame_ticks}": bench.throughput(frame_ticks, ticks, plan.rounds)
                      for frame_ticks, ticks in plan.ticks.items()}
        rss_after_throughput = resident_mb()
        latency, missed = bench.latency(order[:paced], plan.latency_seconds)
        missed += bench.saturated(order[paced:paced + plan.saturated_breaches], plan.ticks[1])
        breached = set(order[:paced + plan.saturated_breaches])
        unexpected = len(set(guard.orders) - breached)
        growth = resident_mb() - rss_after_throughput
    decoding = decode.measure(plan is QUICK)
    return {
        "cores": len(os.sched_getaffinity(0)),
        "throughput": throughput,
        "latency_ms": latency,
        "decode": decoding,
        "missed_breaches": missed,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_growth_mb": round(growth, 1),
        "unexpected_closes": unexpected,
        "json_parser": JSON_PARSER,
        "quick": plan is QUICK,
    }


class _Bench:
    """The measurements, each a job for the feed server and a look at the service."""

    def __init__(self, server: FeedServer, guard: GuardUnderTest,
                 prices: dict[str, float]) -> None:
        self.server = server
        self.guard = guard
        self.prices = prices

    def throughput(self, frame_ticks: int, ticks: int, rounds: int) -> dict[str, Any]:
        ours, theirs = [], []
        for seed in range(rounds):
            theirs.append(self._baseline_rate(Stream(BASELINE_PATH, self.prices, ticks,
                                                     frame_ticks, seed)))
            ours.append(self._guard_rate(Stream(GUARD_PATH, self.prices, ticks, frame_ticks,
                                                seed)))
        guard_rate, base_rate = statistics.median(ours), statistics.median(theirs)
        return {"tradeguard_ticks_per_s": round(guard_rate),
                "baseline_ticks_per_s": round(base_rate),
                "ratio": round(guard_rate / base_rate, 3)}

    def _baseline_rate(self, job: Stream) -> float:
        self.server.begin(job)
        ended = baseline(self.server.url(job.path), sorted(job.prices), job.ticks)
        done = self.server.result(JOB_TIMEOUT)
        return done.ticks / (ended - done.first_sent)

    def _guard_rate(self, job: Stream) -> float:
        before = self.guard.ticks_forwarded()
        self.server.begin(job)
        done = self.server.result(JOB_TIMEOUT)
        ended = self.guard.drained(before + done.ticks, JOB_TIMEOUT)
        return done.ticks / (ended - done.first_sent)

    def latency(self, symbols: list[str], seconds: float) -> tuple[dict[str, Any], int]:
        """Breaches at RATE ticks/s offered: the latency figures and how many were missed."""
        breaches = tuple((s, breach_price(self.prices[s])) for s in symbols)
        self.server.begin(Paced(GUARD_PATH, self.prices, RATE, seconds, 1, SEED, breaches,
                                BREACH_EVERY))
        done = self.server.result(seconds + JOB_TIMEOUT)
        sent = dict(done.breaches_sent)
        orders = self.guard.wait_for_orders(list(sent), ORDER_WAIT)
        millis = sorted((orders[s] - at) * 1000 for s, at in sent.items() if s in orders)
        report = {
            "offered_ticks_per_s": round(done.ticks / (done.last_sent - done.first_sent)),
            "p50": _percentile(millis, 50),
            "p99": _percentile(millis, 99),
            "max": round(millis[-1], 2) if millis else None,
            "frame_ticks": 1,
            "breaches": len(sent),
        }
        return report, len(sent) - len(orders)

    def saturated(self, symbols: list[str], ticks: int) -> int:
        """Breaches inside 1-tick frames sent as fast as the service takes them; how many missed."""
        before = self.guard.ticks_forwarded()
        breaches = tuple((s, breach_price(self.prices[s])) for s in symbols)
        self.server.begin(Stream(GUARD_PATH, self.prices, ticks, 1, SEED, breaches,
                                 ticks // max(1, len(breaches))))
        done = self.server.result(JOB_TIMEOUT)
        self.guard.drained(before + done.ticks, JOB_TIMEOUT)
        sent = [symbol for symbol, _ in done.breaches_sent]
        return len(sent) - len(self.guard.wait_for_orders(sent, ORDER_WAIT))


def baseline(url: str, symbols: list[str], ticks: int) -> float:
    """The bare loop: read frames, parse them, keep the last price per symbol.

    Returns time.monotonic() once `ticks` ticks were taken in.
    """
    ws = websocket.create_connection(url, timeout=JOB_TIMEOUT, skip_utf8_validation=True)
    try:
        ws.send(subscribe_frame(symbols))
        last: dict[str, float] = {}
        seen = 0
        while seen < ticks:
            document = loads(ws.recv())
            for tick in document if type(document) is list else (document,):
                last[tick["symbol"]] = tick["price"]
                seen += 1
        return time.monotonic()
    finally:
        ws.close()


def _percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return round(sorted_values[rank - 1], 2)


# Output ----------------------------------------------------------------------


def render(report: dict[str, Any]) -> str:
    """The human table: every figure with its target."""
    lines = [f"tradeguard bench{' --quick' if report['quick'] else ''}: {report['cores']} cores, "
             f"{SYMBOLS} symbols each with an open position, JSON parser {report['json_parser']}",
             "",
             f"{'throughput':<16}{'tradeguard':>14}{'baseline':>14}{'ratio':>8}   target"]
    for key, label in (("frame_1", "1-tick frames"), ("frame_50", "50-tick frames")):
        row = report["throughput"][key]
        lines.append(f"  {label:<14}{row['tradeguard_ticks_per_s']:>12,}/s"
                     f"{row['baseline_ticks_per_s']:>12,}/s{row['ratio']:>8.2f}   "
                     f">= {TARGETS[key]}  {_verdict(row['ratio'] >= TARGETS[key])}")
    latency = report["latency_ms"]
    p99_ok = latency["p99"] is not None and latency["p99"] <= TARGETS["p99_ms"]
    lines += [
        "",
        f"tick to order at {latency['offered_ticks_per_s']:,} ticks/s offered (1-tick frames, "
        f"{latency['breaches']} breaches):",
        f"  p50 {latency['p50']} ms   p99 {latency['p99']} ms   max {latency['max']} ms   "
        f"target p99 <= {TARGETS['p99_ms']:g} ms  {_verdict(p99_ok)}",
        f"missed breaches (paced and at full load): {report['missed_breaches']}   "
        f"closes without a breach: {report['unexpected_closes']}   "
        f"{_verdict(report['missed_breaches'] == 0 and report['unexpected_closes'] == 0)}",
        *_decode_lines(report["decode"]),
        f"memory: peak RSS {report['peak_rss_mb']} MB, growth {report['rss_growth_mb']} MB "
        "after warm-up",
        "",
        "baseline: websocket-client recv (UTF-8 check off) + the same JSON parser + dict update,",
        "on the same server stream; tradeguard: the real FeedActor -> CacheActor and MonitorActor.",
    ]
    return "\n".join(lines)


def _decode_lines(decoding: dict[str, Any]) -> list[str]:
    lines = []
    for name, row in decoding.items():
        if row["ratio"] is None:
            lines.append(f"decode {name}: peer missing ({row.get('missing', 'unknown')})")
            continue
        lines.append(f"decode {name}: {row['tradeguard_ticks_per_s']:,}/s against "
                     f"{row['peer_ticks_per_s']:,}/s ({row.get('peer', 'the SDK')}), ratio "
                     f"{row['ratio']:.1f}   target >= {TARGETS['decode']:g}  "
                     f"{_verdict(row['ratio'] >= TARGETS['decode'])}")
    return lines


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"
