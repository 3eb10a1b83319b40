"""The whole Kite stand-in: one book behind the REST API and the ticker."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import replace

from tradeguard.sim.kite.book import KiteBook
from tradeguard.sim.kite.rest import KiteRestServer
from tradeguard.sim.kite.ticker import KiteTickerServer
from tradeguard.sim.service import SimService

API_KEY = "standinkey"
ACCESS_TOKEN = "standintoken0001"  # noqa: S105 - a loopback stand-in's own token


class KiteStandIn(SimService):
    """Kite Connect on loopback. Controls live on `book` (prices, faults, hand closes, GTTs,
    token rotation); `rest` and `ticker` record what clients sent."""

    def __init__(self, *, api_key: str = API_KEY, access_token: str = ACCESS_TOKEN,
                 ssl_context: ssl.SSLContext | None = None,
                 heartbeat_interval: float | None = 1.0, gzip_instruments: bool = True) -> None:
        self.book = KiteBook(api_key, access_token)
        self._ssl = ssl_context
        self._heartbeat = heartbeat_interval
        self._gzip = gzip_instruments
        self.rest: KiteRestServer | None = None
        self.ticker = KiteTickerServer(self.book, ssl_context=ssl_context,
                                       heartbeat_interval=heartbeat_interval)

    def start(self) -> KiteStandIn:
        self.rest = KiteRestServer(self.book, tls=self._ssl, gzip_instruments=self._gzip)
        self.rest.start()
        self.ticker.start()
        return self

    def stop(self) -> None:
        self.ticker.stop()
        if self.rest is not None:
            self.rest.stop()
            self.rest = None

    @property
    def api_url(self) -> str:
        """`broker.url` (Kite's `root`)."""
        if self.rest is None:
            raise RuntimeError("KiteStandIn is not started")
        return f"{'https' if self._ssl else 'http'}://127.0.0.1:{self.rest.port}"

    @property
    def instruments_url(self) -> str:
        return f"{self.api_url}/instruments"

    @property
    def ticker_url(self) -> str:
        return self.ticker.url

    def set_price(self, symbol: str, price: float) -> None:
        """Move the market: a tick to subscribers, GTTs it crosses fire."""
        self.book.set_price(symbol, price)

    def send_burst(self, symbol: str, prices: Sequence[float]) -> int:
        """Many ticks of one symbol in one binary frame per client (each client's mode);
        the book ends at the last price. Returns clients reached."""
        if not prices:
            return 0
        quotes = [replace(self.book.set_price_quietly(symbol, price)) for price in prices]
        return self.ticker.send_quotes(quotes)
