"""Brokers: where a close order goes and the fill that comes back.

`base` holds what every broker speaks (CloseOrder, Fill, Holding, the Broker
protocol); each kind lives in a module of its own, and each venue to come in
a package of its own (`kite/`, `upstox/`). `KINDS` is the registry that
`config.py` validates `broker.kind` against and `make_broker` builds from.

A venue that is more than an order endpoint (Kite: a token, an instrument
master and a ticker that must agree with its orders) is built once by
`make_venue`; its broker kind's factory takes the broker from it, and the
feed registry takes its protocol from the same object.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from tradeguard.brokers.base import Broker, CloseOrder, Fill, Holding
from tradeguard.brokers.http import HttpBroker
from tradeguard.brokers.paper import PaperBroker
from tradeguard.errors import BrokerError
from tradeguard.net.http import Resolves
from tradeguard.prices import Quote

if TYPE_CHECKING:
    from tradeguard.alerts import AlertSink
    from tradeguard.config import Config
    from tradeguard.positions import Position

QuoteSource = Callable[[str], Quote | None]  # the freshest price TradeGuard has for a symbol


class Venue(Protocol):
    """A broker built with its feed and instruments (tradeguard.brokers.kite.KiteVenue)."""

    def broker(self) -> Broker: ...

    def feed_protocol(self) -> Any: ...  # a tradeguard.feed.FeedProtocol

    def admit(self, position: Position) -> Position:
        """The position as this venue names it; PositionError 400 if it cannot trade it."""
        ...

    def name(self, symbol: str) -> str:
        """`symbol` as this venue writes it (no check): what the API's URLs are matched on."""
        ...

    def reload_token(self) -> bool: ...

    def feed_messages(self, messages: list[object]) -> None:
        """What the feed received besides ticks (Parsed.messages: Kite's order updates)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class BrokerParts:
    """What a broker factory may use besides the config."""

    quote: QuoteSource
    resolver: Resolves
    venue: Venue | None = None


BrokerFactory = Callable[["Config", BrokerParts], Broker]
VenueFactory = Callable[..., Venue]

__all__ = ["KINDS", "VENUES", "Broker", "BrokerParts", "CloseOrder", "Fill", "Holding",
           "HttpBroker", "PaperBroker", "Venue", "make_broker", "make_venue"]


def _paper(cfg: Config, parts: BrokerParts) -> Broker:
    # No age limit: a market close of a blind position fills at the last price
    # seen, and the fill (and the API answer) carries that price's true age.
    return PaperBroker(parts.quote, max_age=math.inf)


def _http(cfg: Config, parts: BrokerParts) -> Broker:
    b = cfg.broker
    return HttpBroker(b.url, b.token, b.timeout, parts.resolver, ca_file=b.ca_file)


def _from_venue(cfg: Config, parts: BrokerParts) -> Broker:
    if parts.venue is None:
        raise BrokerError(f"broker.kind {cfg.broker.kind!r} is built with its venue "
                          "(make_venue) and none was given")
    return parts.venue.broker()


def _kite_venue(cfg: Config, **parts: Any) -> Venue:
    from tradeguard.brokers.kite import KiteVenue  # noqa: PLC0415 - only when configured

    return KiteVenue(cfg, **parts)


KINDS: Mapping[str, BrokerFactory] = {"paper": _paper, "http": _http, "kite": _from_venue}
VENUES: Mapping[str, VenueFactory] = {"kite": _kite_venue}


def make_venue(cfg: Config, *, resolver: Resolves, store: Any, alerts: AlertSink,
               ) -> Venue | None:
    """The venue `broker.kind` (or else `feed.protocol`) names; None for a plain broker."""
    for name in (cfg.broker.kind, cfg.feed.protocol):
        if name in VENUES:
            return VENUES[name](cfg, resolver=resolver, store=store, alerts=alerts)
    return None


def make_broker(cfg: Config, *, quote: QuoteSource, resolver: Resolves,
                venue: Venue | None = None) -> Broker:
    """The broker `cfg.broker.kind` names (config validation has checked it is in KINDS)."""
    return KINDS[cfg.broker.kind](cfg, BrokerParts(quote, resolver, venue))
