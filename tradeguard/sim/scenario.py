"""A simulated market on loopback: an exchange feed and the DNS server that knows its name.

`SimMarket` is what `tradeguard demo` runs against, and what you can run to
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
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any

from tradeguard.sim.dns_server import DnsServer
from tradeguard.sim.exchange import SimExchange

FEED_HOST = "feed.tradeguard.test"


class SimMarket:
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

    def __enter__(self) -> SimMarket:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

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
