"""`tradeguard chaos`: the service under load while faults are injected at random.

The world (`world`) is the real System on loopback with its simulated
exchange, fallback DNS server, HTTP broker and Telegram. The market
(`chaos_market`) sends a steady tick load and opens positions whose prices
cross their levels on a schedule. For `duration` seconds `chaos_faults`
breaks things: the feed killed and restarted or half-open, the fallback DNS
server down, the system resolver failing, the broker answering 500 or
hanging, Telegram failing or hanging, actors crashed and hung through the
fault endpoint. Then every fault is healed and the run waits for the
service to settle, and `chaos_checks` holds it to its invariants.

The seed fixes every random choice (not the threads' timing). Exit 0 when
every invariant held, 1 when one did not, 70 when the run itself failed.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from tradeguard.errors import TradeGuardError
from tradeguard.exits import EX_OK, EX_SOFTWARE, EX_VIOLATED
from tradeguard.positions import State
from tradeguard.tools.bench.guard import logging_to, resident_mb
from tradeguard.tools.chaos.checks import CriticalAlerts, memory_growth, violations
from tradeguard.tools.chaos.faults import KINDS, Chaos
from tradeguard.tools.chaos.market import Market
from tradeguard.tools.chaos.world import World

TRADING = [f"CHAOS{i:02d}" for i in range(8)]
BACKGROUND = [f"CALM{i:02d}" for i in range(24)]
TURN = 0.1  # seconds between two looks of the chaos loop
SETTLE_TIMEOUT = 60.0

logger = logging.getLogger(__name__)


def run_chaos(duration: float, seed: int | None, as_json: bool) -> int:
    seed = random.SystemRandom().randrange(1 << 31) if seed is None else seed
    try:
        report = run(duration, seed)
    except TradeGuardError as exc:
        print(f"tradeguard chaos: {exc}", file=sys.stderr)
        return EX_SOFTWARE
    print(json.dumps(report) if as_json else render(report))
    return EX_OK if not report["violations"] else EX_VIOLATED


def run(duration: float, seed: int) -> dict[str, Any]:
    """One chaos run; the report (`violations` empty when every invariant held)."""
    started = time.monotonic()
    criticals = CriticalAlerts()
    with tempfile.TemporaryDirectory(prefix="tradeguard-chaos-") as tmp, \
            logging_to(Path(tmp) / "chaos.log", criticals), \
            World(Path(tmp), TRADING + BACKGROUND) as world:
        market = Market(world, TRADING, BACKGROUND, seed).start()
        chaos = _Run(world, market, Chaos(world, random.Random(seed + 2)))  # noqa: S311
        try:
            chaos.break_things(started + duration)
            market.settle()
            left = chaos.settle()
        finally:
            market.stop()
        problems = left + violations(world, market, criticals.texts, chaos.memory)
        report = chaos.report(problems, criticals.texts)
        if problems:  # the log is the evidence: keep it past the temporary directory
            kept = Path.cwd() / f"tradeguard-chaos-{seed}.log"
            shutil.copyfile(Path(tmp) / "chaos.log", kept)
            report["log"] = str(kept)
    report.update(seed=seed, duration_s=duration, elapsed_s=round(time.monotonic() - started, 1))
    return report


class _Run:
    """The chaos loop and what it saw."""

    def __init__(self, world: World, market: Market, chaos: Chaos) -> None:
        self.world = world
        self.market = market
        self.chaos = chaos
        self.memory: list[float] = []  # resident MB, about once a second

    def break_things(self, end: float) -> None:
        next_sample = 0.0
        while (now := time.monotonic()) < end:
            self.chaos.turn(injecting=True)
            if now >= next_sample:
                self.memory.append(resident_mb())
                next_sample = now + 1.0
            time.sleep(TURN)

    def settle(self) -> list[str]:
        """Heal everything, wait until nothing is left to finish; what was left, if anything."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            self.chaos.turn(injecting=False)
            left = self._unfinished()
            if not left:
                self.memory.append(resident_mb())
                return []
            if time.monotonic() > deadline:
                _log_threads()  # what each thread was doing when it did not settle
                return [f"not settled {SETTLE_TIMEOUT:.0f}s after the last fault: {item}"
                        for item in left]
            time.sleep(TURN)

    def _unfinished(self) -> list[str]:
        system = self.world.system
        store = system.services.store
        left = [f"{f.kind} not recovered" for f in self.chaos.healed]
        left += [f"{e.symbol}: close not done" for e in self.market.open_work()]
        left += [f"{p.symbol}: {p.state.value}" for p in store.live_positions()
                 if p.state is not State.OPEN]
        if pending := store.pending_count():
            left.append(f"{pending} alert(s) queued")
        if not system.supervisor.all_up():
            left.append("an actor is down")
        if system.supervisor.gave_up.is_set():
            left.append("the supervisor gave up")
        return left

    def report(self, problems: list[str], criticals: list[str]) -> dict[str, Any]:
        episodes, memory = self.market.episodes, self.memory
        injected, survived = self.chaos.injected, self.chaos.survived
        return {
            "faults": {k.kind: {"injected": injected[k.kind], "survived": survived[k.kind]}
                       for k in KINDS},
            "ticks_delivered": self.market.counts.ticks,
            "frames_undelivered": self.market.counts.undelivered_frames,
            "emergency_requests": self.market.counts.emergency_requests,
            "api_unanswered": self.market.counts.api_errors,
            "positions_opened": len(episodes),
            "crossings": sum(1 for e in episodes if e.crossed is not None),
            "emergency_closes": sum(1 for e in episodes if e.emergency and e.crossed is None),
            "broker_orders": self.world.broker.order_count,
            "critical_alerts": len(set(criticals)),
            "telegram_messages": len(self.world.telegram.messages),
            "actor_restarts": sum(int(s["restarts"])
                                  for s in self.world.system.supervisor.status().values()),
            "rss_mb": _rss(memory),
            "violations": problems,
        }


def _log_threads() -> None:
    for thread_id, frame in sys._current_frames().items():
        logger.error("[CHAOS] thread %s:\n%s", thread_id, "".join(traceback.format_stack(frame)))


def _rss(memory: list[float]) -> dict[str, float]:
    if not memory:
        return {}
    rss = {"first": round(memory[0], 1), "median": round(statistics.median(memory), 1),
           "last": round(memory[-1], 1)}
    if (growth := memory_growth(memory)) is not None:
        rss.update(after_warm_up=round(growth[0], 1), end=round(growth[1], 1),
                   growth=round(growth[1] - growth[0], 1))
    return rss


def render(report: dict[str, Any]) -> str:
    lines = [f"tradeguard chaos: {report['duration_s']:g}s of faults (seed {report['seed']}), "
             f"{report['elapsed_s']:g}s in all", "",
             f"{'fault':<26}{'injected':>9}{'survived':>10}"]
    for kind, counts in report["faults"].items():
        lines.append(f"  {kind:<24}{counts['injected']:>9}{counts['survived']:>10}")
    rss = report["rss_mb"]
    lines += [
        "",
        f"ticks delivered {report['ticks_delivered']:,} (frames lost to faults "
        f"{report['frames_undelivered']:,}); API requests unanswered {report['api_unanswered']}",
        f"positions opened {report['positions_opened']}, "
        f"crossings {report['crossings']}, emergency closes {report['emergency_closes']}, "
        f"broker orders {report['broker_orders']}",
        f"critical alerts {report['critical_alerts']}, Telegram messages "
        f"{report['telegram_messages']}, actor restarts {report['actor_restarts']}",
        f"memory (RSS MB): first {rss.get('first')}, median {rss.get('median')}, "
        f"last {rss.get('last')}; after warm-up {rss.get('after_warm_up')} -> "
        f"{rss.get('end')} (growth {rss.get('growth')})",
        "",
    ]
    if report["violations"]:
        lines.append(f"INVARIANTS VIOLATED ({len(report['violations'])}):")
        lines += [f"  - {problem}" for problem in report["violations"]]
        lines.append(f"the run's log: {report['log']}")
    else:
        lines.append("every invariant held: each crossing closed once, no close without a "
                     "crossing or a request, none left closing, each critical alert delivered "
                     "once, every API request answered, memory flat")
    return "\n".join(lines)
