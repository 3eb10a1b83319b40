"""Playing a scenario against TradeGuard: a simulated market, the API, a narrator.

`SimMarket` is an exchange feed on loopback and the DNS server that knows
its name. It is what `tradeguard demo` runs against, and what you can run to
rehearse your own configuration before a real incident does it for you:

    with SimMarket({"BOSCHLTD": 735.0}) as market:
        print(market.config_sections())   # feed.url and dns.fallback_servers to use
        ...                               # run TradeGuard against it
        market.feed_down()                # the exchange disappears
        market.feed_up()                  # and comes back on the same address
        market.push("BOSCHLTD", 698.0)    # a price of your choosing

The feed's hostname is a `.test` name (RFC 2606) that no system resolver
knows, so TradeGuard has to reach it through its fallback DNS server: the
resolver ladder is exercised from the first connection on.

`GuardClient` talks to a running TradeGuard as an operator does (HTTP, JSON,
the bearer token), and `Narrator` prints a story as it happens, with what
TradeGuard says meanwhile: its alerts and the log lines worth quoting.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, TextIO, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from tradeguard.alerts import headline
from tradeguard.errors import TradeGuardError
from tradeguard.sim.dns_server import DnsServer
from tradeguard.sim.exchange import SimExchange
from tradeguard.sim.service import SimService

FEED_HOST = "feed.tradeguard.test"
INDENT = " " * 8
T = TypeVar("T")


class SimMarket(SimService):
    """Prices moving as random walks on a WebSocket feed, reachable by name via its own DNS."""

    def __init__(
        self,
        prices: Mapping[str, float],
        *,
        interval: float = 0.25,
        step_pct: float = 0.1,
        seed: int | None = None,
        feed_host: str = FEED_HOST,
    ) -> None:
        self.feed_host = feed_host
        self.exchange = SimExchange()
        self.dns = DnsServer()
        self._prices = dict(prices)
        self._interval = interval
        self._step_pct = step_pct
        self._seed = seed

    def start(self) -> SimMarket:
        self.dns.start()
        self.dns.set_record(self.feed_host, ["127.0.0.1"])
        try:
            self.exchange.start()
        except BaseException:
            self.dns.stop()
            raise
        self._walk(self._prices)
        return self

    def stop(self) -> None:
        self.exchange.stop()
        self.dns.stop()

    @property
    def feed_url(self) -> str:
        return self.exchange.url_for(self.feed_host)

    @property
    def dns_address(self) -> str:
        """The fallback DNS server as `dns.fallback_servers` wants it ("ip:port")."""
        return self.dns.address

    @property
    def symbols(self) -> list[str]:
        return sorted(self._prices)

    def config_sections(self) -> dict[str, dict[str, Any]]:
        """The keys that point TradeGuard at this market; merge your own into them."""
        return {
            "feed": {"url": self.feed_url, "symbols": self.symbols},
            "dns": {"fallback_servers": [self.dns_address]},
        }

    def feed_down(self) -> None:
        """The exchange goes away: open connections close, new ones are refused."""
        self.exchange.stop()

    def feed_up(self, prices: Mapping[str, float] | None = None) -> None:
        """The exchange is back on the same address; the walk resumes from `prices`."""
        self.exchange.start()
        if prices:
            self._prices.update(prices)
        self._walk(self._prices)

    def push(self, symbol: str, price: float) -> int:
        """Send one tick now; the walk goes on from this price. Returns clients reached."""
        self._prices[symbol] = price
        return self.exchange.send_ticks([(symbol, price)])

    def _walk(self, prices: Mapping[str, float]) -> None:
        self.exchange.start_walk(dict(prices), self._interval, self._step_pct, self._seed)


class GuardClient:
    """TradeGuard's HTTP API as an operator uses it: JSON bodies and the bearer token."""

    def __init__(self, base_url: str, token: str, timeout: float = 10.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, body: object = None, *,
             auth: bool = True) -> tuple[int, Any]:
        """(status, decoded JSON body) of one request; HTTP errors are answers, not raised."""
        data = None if body is None else json.dumps(body).encode()
        url = self.base_url + path  # http(s) only, checked in __init__
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310
        request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:  # noqa: S310
                return resp.status, _json(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _json(exc.read())
        except OSError as exc:
            raise TradeGuardError(f"{method} {path}: {exc}") from exc

    def get(self, path: str) -> Any:
        status, body = self.call("GET", path)
        if status != 200:
            raise TradeGuardError(f"GET {path} answered {status}: {body}")
        return body

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = self.get("/api/v1/monitoring/connection-health")
        return body

    def positions(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/positions")["positions"])

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels` (0 if none)."""
        request = urllib.request.Request(self.base_url + "/metrics")  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:  # noqa: S310
                text = resp.read().decode()
        except OSError as exc:
            raise TradeGuardError(f"GET /metrics: {exc}") from exc
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return raw.decode("utf-8", "replace")


class LogQuotes(logging.Handler):
    """Collects the log lines a story quotes: every line with one of the given prefixes."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__(logging.INFO)
        self._prefixes = prefixes
        self._lines: list[str] = []
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(self._prefixes):
            with self._guard:
                self._lines.append(message)

    def since(self, index: int) -> list[str]:
        with self._guard:
            return self._lines[index:]


class Narrator:
    """Prints a story as it happens, interleaved with what TradeGuard says.

    While the story waits (`until`), the narrator polls TradeGuard's recent
    alerts and the quoted log lines and prints each new one once, so they show
    up in the step where they happened.
    """

    def __init__(self, guard: GuardClient, quotes: LogQuotes, *, once: tuple[str, ...] = (),
                 out: TextIO = sys.stdout, poll: float = 0.1,
                 started: float | None = None) -> None:
        self.guard = guard
        self.quotes = quotes
        self.out = out
        self.poll = poll
        self.started = time.monotonic() if started is None else started  # the story's clock
        self.alerts: Counter[str] = Counter()
        self._seen_alerts: set[tuple[float, str, str]] = set()
        self._quoted = 0
        self._once = once  # prefixes quoted only the first time they appear
        self._once_done: set[str] = set()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def step(self, title: str) -> None:
        self._print(f"\n[{self.elapsed():5.1f}s] {title}")

    def say(self, text: str) -> None:
        for line in text.splitlines():
            self._print(INDENT + line)

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def watch(self) -> None:
        """Print TradeGuard's alerts and quoted log lines not printed yet."""
        for line in self.quotes.since(self._quoted):
            self._quoted += 1
            prefix = next((p for p in self._once if line.startswith(p)), None)
            if prefix is not None:
                if prefix in self._once_done:
                    continue
                self._once_done.add(prefix)
            self.say(f"log>   {line}")
        status = self.guard.get("/api/v1/status")
        for alert in sorted(status["alerts"], key=lambda a: a["created_at"]):
            key = (alert["created_at"], alert["kind"], alert["text"])
            if key not in self._seen_alerts:
                self._seen_alerts.add(key)
                self.alerts[alert["kind"]] += 1
                self.say(f"alert> {headline(alert['text'])}")

    def until(self, condition: Callable[[], T | None], timeout: float, what: str) -> T:
        """Wait for `condition()` to return something true, watching meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            result = condition()
            self.watch()
            if result:
                return result
            if time.monotonic() >= deadline:
                raise TradeGuardError(f"{what}: not seen within {timeout:g}s")
            time.sleep(self.poll)

    def pause(self, seconds: float) -> None:
        """Let the story breathe (prices move, TradeGuard works), watching meanwhile."""
        end = time.monotonic() + seconds
        self.until(lambda: time.monotonic() >= end, seconds + 5.0, "a pause")
