"""Zerodha Kite Connect: one venue object that owns everything TradeGuard shares with Kite.

As a nautilus venue adapter does, `KiteVenue` is built once from the config
and hands out the parts that must agree with each other:
- one `TokenSource` (auth.py): the REST calls and the ticker use the same
  token and hear of each other's refusals, so a dead token is one alert;
- one kept-alive `HttpClient` and `KiteRest` (rest.py), with the 10/s limiter;
- one instrument master (instruments.py), fetched at start and each trading
  day, which the ticker (token <-> symbol), the orders (exchange, trading
  symbol) and the API's symbol check (`admit`) all read;
- the `KiteBroker` (orders.py) and, per feed incarnation, a `KiteFeed`
  (ticker.py).

`tradeguard.brokers.make_venue` builds it when `broker.kind` or
`feed.protocol` is "kite"; the broker registry and the feed registry both
take their part from it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import TYPE_CHECKING

from tradeguard.alerts import AlertSink
from tradeguard.brokers.kite.auth import TokenSource
from tradeguard.brokers.kite.instruments import (
    DEFAULT_EXCHANGE,
    MAX_CSV_BYTES,
    Instruments,
    Kept,
    canonical,
)
from tradeguard.brokers.kite.orders import KiteBroker
from tradeguard.brokers.kite.rest import KiteRest
from tradeguard.errors import BrokerError, PositionError
from tradeguard.net.http import HttpClient, Resolves
from tradeguard.positions import Position

if TYPE_CHECKING:
    from tradeguard.brokers.kite.ticker import KiteFeed
    from tradeguard.config import Config

logger = logging.getLogger(__name__)

DEFAULT_URL = "https://api.kite.trade"  # [C] connect.py _default_root_uri
REFRESH_CHECK = 600.0  # seconds between looks at whether a new trading day's list is due

__all__ = ["DEFAULT_URL", "KiteBroker", "KiteVenue", "TokenSource"]


class KiteVenue:
    """Kite for one TradeGuard: token, HTTP client, instrument master, broker, feed."""

    def __init__(self, cfg: Config, *, resolver: Resolves | None, store: Kept,
                 alerts: AlertSink, refresh_every: float = REFRESH_CHECK) -> None:
        b = cfg.broker
        self.url = (b.url or DEFAULT_URL).rstrip("/")
        self.instruments_url = b.instruments_url or f"{self.url}/instruments"
        self.default_exchange = getattr(getattr(cfg, "market", None), "default_exchange",
                                        "") or DEFAULT_EXCHANGE
        self._cfg = cfg
        self.tokens = TokenSource(b.token, b.token_file)
        try:
            self.client = HttpClient(resolver, timeout=b.timeout, ca_file=b.ca_file)
        except (OSError, ValueError) as exc:
            raise BrokerError(f"broker.ca_file {b.ca_file!r}: {exc}") from exc
        self.rest = KiteRest(self.url, b.api_key, self.tokens, self.client,
                             on_alert=alerts.alert, timeout=b.timeout)
        self.instruments = Instruments(self._fetch_list, store, on_alert=alerts.alert)
        self.instruments.start()
        self._broker = KiteBroker(
            self.rest, product=getattr(b, "product", "MIS") or "MIS",
            market_protection=b.market_protection, default_exchange=self.default_exchange)
        self._stop = threading.Event()
        self._refresher = threading.Thread(target=self._refresh_daily, args=(refresh_every,),
                                           name="kite-instruments", daemon=True)
        self._refresher.start()

    # What the registries take --------------------------------------------------

    def broker(self) -> KiteBroker:
        return self._broker

    def feed_protocol(self) -> KiteFeed:
        """A new ticker protocol (one per feed incarnation) on the shared token and master."""
        from tradeguard.brokers.kite.ticker import KiteFeed  # noqa: PLC0415 - only with a feed

        mode = getattr(self._cfg.feed, "mode", "") or "ltp"
        # The token source stats the file on each call (~1 us) and reads it when it changed:
        # every connect, and every credential() poll of a refused feed, sees a new token.
        return KiteFeed(self._cfg.feed.url, self._cfg.broker.api_key, self.tokens,
                        _Lookup(self), mode, rejected=self.tokens.rejected,
                        accepted=self.tokens.accepted)

    def admit(self, position: Position) -> Position:
        """A position to open, its symbol as Kite writes it; PositionError 400 if Kite has none."""
        instrument = self.instruments.master.admit(position.symbol, self.default_exchange)
        if not float(position.quantity).is_integer():
            raise PositionError(f"quantity {position.quantity:g}: Kite quantities are whole "
                                "numbers")
        return replace(position, symbol=instrument.symbol)

    def feed_messages(self, messages: list[object]) -> None:
        """The ticker's order updates: a close waiting for its fill hears it at once."""
        from tradeguard.brokers.kite.ticker import KiteOrderUpdate  # noqa: PLC0415

        for message in messages:
            if isinstance(message, KiteOrderUpdate):
                self._broker.order_update(message.data)

    def name(self, symbol: str) -> str:
        """`INFY` as `NSE:INFY` (market.default_exchange), upper case: no list is asked."""
        return canonical(symbol, self.default_exchange)

    # Life cycle ---------------------------------------------------------------

    def reload_token(self) -> bool:
        """Read broker.token_file again (SIGHUP); True if the token changed."""
        return self.tokens.reload()

    def close(self) -> None:
        self._stop.set()
        self.client.close()

    def _fetch_list(self) -> bytes:
        resp = self.rest.raw(self.instruments_url, what="instrument list",
                             max_body=MAX_CSV_BYTES)
        return resp.raw

    def _refresh_daily(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.instruments.refresh_if_due()
            except Exception:  # a thread of its own: log, keep the old list, try later
                logger.exception("[KITE] instrument list refresh failed")


class _Lookup:
    """The ticker's view of the master (ticker.InstrumentLookup), always the current list."""

    def __init__(self, venue: KiteVenue) -> None:
        self._venue = venue

    def token(self, symbol: str) -> int | None:
        master = self._venue.instruments.master
        return master.token_of(canonical(symbol, self._venue.default_exchange))

    def symbol(self, token: int) -> str | None:
        return self._venue.instruments.master.symbol_of(token)
