"""What must hold after a chaos run, checked against what TradeGuard and its peers recorded.

- Every crossing the feed delivered produced exactly one close, for the
  level crossed; no close without a crossing or an emergency request.
- The broker filled exactly one order per closed position, and no other.
- No position is left closing (or with its close failed).
- Every critical alert reached Telegram exactly once.
- Every API request was answered (an operator's close must get an answer,
  even while the ApiActor itself is restarted).
- Memory is flat: after the warm-up (the first five minutes of a long run,
  the first quarter of a short one) resident memory grows by at most the
  slack (5 MB in a long run, where growth is a leak and not warm-up).
"""

from __future__ import annotations

import logging
import re
import statistics
from collections import Counter

from tradeguard.positions import State
from tradeguard.tools.chaos.market import Episode, Market
from tradeguard.tools.chaos.world import World

WARM_UP_S = 300.0  # a long run's first five minutes are warm-up (samples are ~1 s apart)
WARM_UP_SHARE = 0.25  # ... and a short run's first quarter
LONG_RUN_S = 600.0  # from this long on, the memory slack is the leak budget
MEMORY_SLACK_MB = 5.0
SHORT_RUN_SLACK_MB = 25.0  # a short run is mostly warm-up: only a runaway counts
WINDOW = 60  # samples averaged at each end of the steady part
_REPEAT = re.compile(r" \(x\d+\)$")  # the notifier's "(xN)" for identical texts folded


class CriticalAlerts(logging.Handler):
    """Collects the text of every critical alert as it is raised (the log sees them all)."""

    def __init__(self) -> None:
        super().__init__(logging.CRITICAL)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("[ALERT] "):
            self.texts.append(message.removeprefix("[ALERT] "))


def violations(world: World, market: Market, criticals: list[str],
               memory: list[float]) -> list[str]:
    return [*_closes(world, market), *_orders(world), *_stuck(world),
            *_critical_deliveries(world, criticals), *_unanswered(market), *_memory(memory)]


def _unanswered(market: Market) -> list[str]:
    count = market.counts.api_errors
    return [f"{count} API request(s) got no answer"] if count else []


def _closes(world: World, market: Market) -> list[str]:
    store = world.system.services.store
    problems = []
    for episode in market.episodes:
        position = store.position(episode.position_id)
        if position is None:
            problems.append(f"{episode.symbol}: position {episode.position_id} is gone")
            continue
        expected = _expected_close(episode)
        if expected is None and position.state is not State.OPEN:
            problems.append(f"{episode.symbol} #{position.id}: {position.state.value} "
                            f"({position.reason}) without a crossing or a request")
        elif expected is not None and position.state is not State.CLOSED:
            problems.append(f"{episode.symbol} #{position.id}: {expected} but still "
                            f"{position.state.value}")
        elif expected is not None and position.reason != expected:
            problems.append(f"{episode.symbol} #{position.id}: {expected} but closed as "
                            f"{position.reason}")
    return problems


def _expected_close(episode: Episode) -> str | None:
    """The reason the episode's position must have been closed for, or None: still open.

    A crossing the feed never carried to TradeGuard must not have closed anything.
    """
    if episode.crossed is not None and episode.delivered:
        return episode.crossed
    return "emergency" if episode.emergency else None


def _orders(world: World) -> list[str]:
    store = world.system.services.store
    closed = {p.client_order_id for p in store.positions(limit=1_000_000)
              if p.state is State.CLOSED}
    orders = set(world.broker.orders)
    problems = [f"order {cid} at the broker for no closed position"
                for cid in sorted(orders - closed)]
    problems += [f"position with order {cid} closed without the broker filling it"
                 for cid in sorted(c for c in closed - orders if c)]
    return problems


def _stuck(world: World) -> list[str]:
    return [f"{p.symbol} #{p.id} left {p.state.value}"
            for p in world.system.services.store.live_positions() if p.state is not State.OPEN]


def _critical_deliveries(world: World, criticals: list[str]) -> list[str]:
    """Each critical text reached Telegram once: whole, or folded under another's "Also:".

    The delivery policy folds criticals of one kind that wait together into one
    message (the newest whole, the others' headlines listed), so a headline
    under "Also:" is a delivery of that alert; a whole text twice is a duplicate.
    """
    messages = [text for _, text in world.telegram.messages]
    whole = Counter(_one_line(text) for text in messages)
    folded = Counter(line for text in messages for line in _also(text))
    problems = []
    for text in sorted(set(criticals)):
        if whole[text] > 1:
            problems.append(f"critical alert delivered {whole[text]} times: "
                            f"{text.split(' | ')[0]}")
        elif whole[text] + folded[text.split(" | ")[0]] == 0:
            problems.append(f"critical alert never delivered: {text.split(' | ')[0]}")
    pending = world.system.services.store.pending_count()
    if pending:
        problems.append(f"{pending} alert(s) never delivered")
    return problems


def _also(text: str) -> list[str]:
    """The headlines a folded critical message lists under "Also:", without "(xN)"."""
    lines = text.split("\n")
    if "Also:" not in lines:
        return []
    return [_REPEAT.sub("", line) for line in lines[lines.index("Also:") + 1:]]


def _one_line(text: str) -> str:
    """A Telegram message as the log shows its alert: no "(xN)", no "Also:" list after it,
    lines joined by " | "."""
    text = text.split("\nAlso:\n", 1)[0]
    first, newline, rest = text.partition("\n")
    return (_REPEAT.sub("", first) + newline + rest).replace("\n", " | ")


def memory_growth(samples: list[float]) -> tuple[float, float] | None:
    """(MB at the end of the warm-up, MB at the end), each a mean of up to a minute."""
    long_run = len(samples) >= LONG_RUN_S
    start = int(WARM_UP_S) if long_run else int(len(samples) * WARM_UP_SHARE)
    steady = samples[start:]
    if len(steady) < 6:
        return None
    window = min(WINDOW, len(steady) // 3)
    return statistics.mean(steady[:window]), statistics.mean(steady[-window:])


def _memory(samples: list[float]) -> list[str]:
    growth = memory_growth(samples)
    if growth is None:
        return []
    before, after = growth
    slack = MEMORY_SLACK_MB if len(samples) >= LONG_RUN_S else SHORT_RUN_SLACK_MB
    if after - before > slack:
        return [f"memory grew from {before:.1f} MB to {after:.1f} MB after the warm-up "
                f"(slack {slack:g} MB)"]
    return []
