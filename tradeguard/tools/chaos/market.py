"""The market of a chaos run: a steady tick load, and positions whose prices cross on a schedule.

Two threads. The ticker sends every symbol's price as one frame every
`TICK_INTERVAL`, whatever state the feed is in. The operator opens a
position on each trading symbol (over the HTTP API, as a user would), lets
its price wander inside the levels, and at a scheduled moment sends it
across one of them, where it stays until TradeGuard has closed the position:
a crossing the feed lost in a fault is sent again, so every crossing is
eventually delivered. Some positions never cross; the operator closes a few
of those by hand (an emergency request). Each position's story is an
`Episode`, which the checks compare with what TradeGuard did.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from dataclasses import dataclass

from tradeguard.errors import TradeGuardError
from tradeguard.positions import Position, Side, State
from tradeguard.tools.chaos.world import World

TICK_INTERVAL = 0.05
OPERATOR_INTERVAL = 0.1
LEVEL = 0.05  # stop-loss and take-profit sit 5% either side of the entry
WANDER = 0.02  # an uncrossed price stays within 2% of the entry
BEYOND = (0.005, 0.03)  # a crossed price sits this far past its level
CROSS_AFTER = (1.0, 5.0)  # seconds from open to the crossing
NEVER_CROSS = 0.15  # share of positions that never cross by themselves
PAUSE = (0.3, 1.5)  # seconds a symbol rests between two positions
EMERGENCY_EVERY = 4.0  # mean seconds between emergency requests
EMERGENCY_RETRY = 3.0
EMERGENCY = "/api/v1/monitoring/emergency-close-position"

logger = logging.getLogger(__name__)


@dataclass
class Episode:
    """One position's life in the run."""

    symbol: str
    side: Side
    entry: float
    position_id: int
    cross_at: float  # time.monotonic(); inf: it does not cross by itself
    level: str  # the level it will cross: "stop_loss" or "take_profit"
    crossed: str | None = None  # set once the price path has crossed
    delivered: bool = False  # a crossing tick went out to a connected feed client
    emergency: bool = False  # an emergency close was requested
    emergency_sent: float = 0.0
    closed: bool = False
    closed_wall: float = 0.0

    def price(self, rng: random.Random) -> float:
        if self.crossed is None:
            return round(self.entry * (1 + rng.uniform(-WANDER, WANDER)), 2)
        level = self.entry * (1 - LEVEL if _below(self.side, self.crossed) else 1 + LEVEL)
        beyond = rng.uniform(*BEYOND)
        return round(level * (1 - beyond if _below(self.side, self.crossed) else 1 + beyond), 2)

    def request(self) -> dict[str, object]:
        """The open-position request body."""
        below, above = self.entry * (1 - LEVEL), self.entry * (1 + LEVEL)
        stop, target = (below, above) if self.side is Side.LONG else (above, below)
        return {"symbol": self.symbol, "side": self.side.value, "quantity": 1,
                "entry_price": self.entry, "stop_loss": round(stop, 2),
                "take_profit": round(target, 2)}


def _below(side: Side, level: str) -> bool:
    """Whether `level` of a `side` position lies below its entry."""
    return (level == "stop_loss") == (side is Side.LONG)


@dataclass
class MarketCounts:
    frames: int = 0
    ticks: int = 0  # ticks in frames that reached a connected client
    undelivered_frames: int = 0  # frames no client could take (feed down or half-open)
    emergency_requests: int = 0
    api_errors: int = 0  # requests the API did not answer (it was down or hung)


class Market:
    """The ticker and the operator; `settle` stops new positions, crossings and requests."""

    def __init__(self, world: World, symbols: list[str], background: list[str],
                 seed: int) -> None:
        self.world = world
        self.symbols = symbols
        self.base = {s: round(100.0 + 37.5 * i, 2) for i, s in enumerate(symbols + background)}
        # One generator per thread: the seed fixes each thread's choices (not their timing).
        self.rng = random.Random(seed)  # noqa: S311 - a simulation, not cryptography
        self._tick_rng = random.Random(seed + 1)  # noqa: S311
        self.episodes: list[Episode] = []
        self.counts = MarketCounts()
        self._live: dict[str, Episode] = {}
        self._rest_until: dict[str, float] = dict.fromkeys(symbols, 0.0)
        self._rested_mono: dict[str, float] = dict.fromkeys(symbols, 0.0)  # vs Tick.received_at
        self._lock = threading.Lock()
        self._settling = threading.Event()
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._tick_forever, name="chaos-ticker"),
                         threading.Thread(target=self._operate_forever, name="chaos-operator")]

    def start(self) -> Market:
        for thread in self._threads:
            thread.start()
        return self

    def settle(self) -> None:
        self._settling.set()

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join()

    def open_work(self) -> list[Episode]:
        """Episodes that must still end in a close: crossed or closed by hand, not yet closed."""
        with self._lock:
            return [e for e in self.episodes
                    if not e.closed and (e.crossed is not None or e.emergency)]

    # The ticker ----------------------------------------------------------------

    def _tick_forever(self) -> None:
        while not self._stopping.wait(TICK_INTERVAL):
            with self._lock:
                frame = [(s, self._price(s)) for s in self.base]
                crossing = [e for e in self._live.values() if e.crossed is not None]
            reached = self.world.exchange.send_ticks(frame)
            self.counts.frames += 1
            if reached:
                self.counts.ticks += len(frame)
                for episode in crossing:
                    episode.delivered = True
            else:
                self.counts.undelivered_frames += 1

    def _price(self, symbol: str) -> float:
        episode = self._live.get(symbol)
        if episode is not None:
            return episode.price(self._tick_rng)
        return round(self.base[symbol] * (1 + self._tick_rng.uniform(-WANDER, WANDER)), 2)

    # The operator ----------------------------------------------------------------

    def _operate_forever(self) -> None:
        next_emergency = time.monotonic() + self.rng.expovariate(1 / EMERGENCY_EVERY)
        while not self._stopping.wait(OPERATOR_INTERVAL):
            now = time.monotonic()
            for symbol in self.symbols:
                try:
                    self._look_after(symbol, now)
                except TradeGuardError as exc:
                    self._unanswered(f"looking after {symbol}", exc)  # next turn
            if now >= next_emergency and not self._settling.is_set():
                next_emergency = now + self.rng.expovariate(1 / EMERGENCY_EVERY)
                self._pick_emergency()

    def _look_after(self, symbol: str, now: float) -> None:
        episode = self._live.get(symbol)
        if episode is None:
            if not self._settling.is_set() and now >= self._rest_until[symbol]:
                self._open(symbol)
            return
        position = self.world.system.services.store.position(episode.position_id)
        if position is not None and position.state is State.CLOSED:
            with self._lock:
                episode.closed, episode.closed_wall = True, time.time()
                del self._live[symbol]
            self._rest_until[symbol] = now + self.rng.uniform(*PAUSE)
            self._rested_mono[symbol] = time.monotonic()
        elif episode.emergency:
            if now - episode.emergency_sent >= EMERGENCY_RETRY:
                self._emergency(episode)
        elif episode.crossed is None and now >= episode.cross_at and not self._settling.is_set():
            with self._lock:
                episode.crossed = episode.level

    def _open(self, symbol: str) -> None:
        """Open a position once TradeGuard holds a price for the symbol newer than its last close.

        Otherwise the last episode's crossed price, still cached, would
        close the new position at once: right for TradeGuard, wrong for the
        story this run tells.
        """
        quote = self.world.system.services.cache.quote(symbol, time.monotonic())
        if quote is None or quote.received_at <= self._rested_mono[symbol]:
            return
        side = self.rng.choice((Side.LONG, Side.SHORT))
        draft = Episode(symbol, side, self.base[symbol], 0, math.inf, "stop_loss")
        try:
            status, _ = self.world.guard().call("POST", "/api/v1/positions", draft.request())
        except TradeGuardError:
            status = 0  # sent or not: the store says
        position = self.world.system.services.store.live_position(symbol)
        if status not in (0, 201, 409) or position is None:
            return
        self._adopt(position)

    def _adopt(self, position: Position) -> None:
        cross_at = (math.inf if self.rng.random() < NEVER_CROSS
                    else time.monotonic() + self.rng.uniform(*CROSS_AFTER))
        assert position.id is not None
        episode = Episode(position.symbol, position.side, position.entry_price, position.id,
                          cross_at, self.rng.choice(("stop_loss", "take_profit")))
        with self._lock:
            self.episodes.append(episode)
            self._live[position.symbol] = episode

    def _pick_emergency(self) -> None:
        with self._lock:
            calm = [e for e in self._live.values() if e.crossed is None and not e.emergency]
            if not calm:
                return
            episode = self.rng.choice(calm)
            episode.emergency = True  # from now on its price never crosses
        self._emergency(episode)

    def _emergency(self, episode: Episode) -> None:
        """Ask for the close; any answer, or none, is fine: the store tells the outcome."""
        episode.emergency_sent = time.monotonic()
        self.counts.emergency_requests += 1
        try:
            self.world.guard().call("POST", EMERGENCY, {"symbol": episode.symbol})
        except TradeGuardError as exc:
            self._unanswered(f"emergency close of {episode.symbol}", exc)

    def _unanswered(self, what: str, error: TradeGuardError) -> None:
        self.counts.api_errors += 1
        logger.error("[CHAOS] API request unanswered (%s): %s", what, error)
