"""The service under benchmark: the real System on loopback, one open long per symbol.

Everything runs as in `tradeguard run` (supervisor, every actor, the SQLite
store, the paper broker, the HTTP API on a free port), pointed at the bench
feed server by IP so that no name is resolved. Each symbol's levels sit at
half and twice its base price, which the feed's prices never reach unless
the bench sends a breach on purpose.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from actors.messages import Ping
from actors.system import System
from tradeguard.brokers import CloseOrder, PaperBroker
from tradeguard.config import config_from_mapping
from tradeguard.errors import TradeGuardError
from tradeguard.logs import FORMAT
from tradeguard.positions import Position, Side
from tradeguard.store import Store

POLL = 0.002  # seconds between looks at the tick counter
STOP_LEVEL = 0.5  # stop-loss at half the base price, take-profit at twice it
BREACH_LEVEL = 0.4  # a breach tick's price, as a share of the base price


class GuardUnderTest:
    """Start, measure and stop the System; orders are timed as the broker receives them."""

    def __init__(self, directory: Path, feed_url: str, prices: dict[str, float]) -> None:
        self._directory = directory
        self._feed_url = feed_url
        self._prices = prices
        self._lock = threading.Lock()
        self.orders: dict[str, float] = {}  # symbol -> time.monotonic() its order arrived
        self._system: System | None = None

    def __enter__(self) -> GuardUnderTest:
        path = self._directory / "bench.db"
        _open_positions(path, self._prices)
        cfg = config_from_mapping({
            "feed": {"url": self._feed_url},
            "dns": {"fallback_servers": []},
            "api": {"token": secrets.token_urlsafe(24)},
            "store": {"path": str(path)},
        }, {})
        self._system = System(cfg, api_port=0)
        broker = self._system.services.broker
        if not isinstance(broker, PaperBroker):
            raise TradeGuardError("the bench needs the paper broker")
        broker.on_order = self._order_arrived
        self._system.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._system is not None:
            self._system.stop()

    def _order_arrived(self, order: CloseOrder, arrived: float) -> None:
        with self._lock:
            self.orders.setdefault(order.symbol, arrived)

    @property
    def system(self) -> System:
        if self._system is None:
            raise TradeGuardError("the System is not started")
        return self._system

    def ticks_forwarded(self) -> int:
        return ticks_forwarded(self.system)

    def drained(self, ticks: int, timeout: float) -> float:
        """Wait until `ticks` ticks were forwarded and both actors handled them; the time then.

        The count is raised only after a batch is told, and a Ping queues
        behind every batch told before it, so the answer proves the monitor
        (and then the cache) has evaluated the last tick.
        """
        deadline = time.monotonic() + timeout
        while self.ticks_forwarded() < ticks:
            if time.monotonic() > deadline:
                raise TradeGuardError(f"only {self.ticks_forwarded()} of {ticks} ticks arrived")
            time.sleep(POLL)
        left = max(0.1, deadline - time.monotonic())
        self.system.ask("MonitorActor", Ping(), timeout=left)
        self.system.ask("CacheActor", Ping(), timeout=left)
        return time.monotonic()

    def wait_for_orders(self, symbols: list[str], timeout: float) -> dict[str, float]:
        """Arrival times of the orders for `symbols`, waiting up to `timeout` for them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if all(s in self.orders for s in symbols):
                    break
            time.sleep(POLL)
        with self._lock:
            return {s: self.orders[s] for s in symbols if s in self.orders}


def ticks_forwarded(system: System) -> int:
    """Ticks the feed has told the cache and the monitor about so far."""
    (family,) = system.services.metrics.feed_ticks.collect()
    return int(next(s.value for s in family.samples if s.name.endswith("_total")))


def resident_mb() -> float:
    """This process's resident memory now, in MB."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


@contextmanager
def logging_to(path: Path, *more: logging.Handler) -> Iterator[None]:
    """The service logs as under `run` (INFO and up, formatted), to a file and to `more`."""
    root = logging.getLogger()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(FORMAT))
    level = root.level
    for each in (handler, *more):
        root.addHandler(each)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        for each in (handler, *more):
            root.removeHandler(each)
        root.setLevel(level)
        handler.close()


def breach_price(base: float) -> float:
    return round(base * BREACH_LEVEL, 2)


def _open_positions(path: Path, prices: dict[str, float]) -> None:
    store = Store(path)
    try:
        now = time.time()
        for symbol, base in prices.items():
            store.add_position(Position(symbol, Side.LONG, 1.0, base, round(base * STOP_LEVEL, 2),
                                        round(base / STOP_LEVEL, 2), opened_at=now))
    finally:
        store.close()
