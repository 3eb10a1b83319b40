"""Brokers: where a close order goes and the fill that comes back.

`base` holds what every broker speaks (CloseOrder, Fill, Holding, the Broker
protocol); each kind lives in a module of its own, and each venue to come in
a package of its own (`kite/`, `upstox/`). `KINDS` is the registry that
`config.py` validates `broker.kind` against and `make_broker` builds from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from tradeguard.brokers.base import Broker, CloseOrder, Fill, Holding
from tradeguard.brokers.http import HttpBroker
from tradeguard.brokers.paper import PaperBroker
from tradeguard.net.http import Resolves
from tradeguard.prices import Quote

if TYPE_CHECKING:
    from tradeguard.config import Config

QuoteSource = Callable[[str], Quote | None]  # the freshest price TradeGuard has for a symbol
BrokerFactory = Callable[["Config", QuoteSource, Resolves], Broker]

__all__ = ["KINDS", "Broker", "CloseOrder", "Fill", "Holding", "HttpBroker", "PaperBroker",
           "make_broker"]


def _paper(cfg: Config, quote: QuoteSource, resolver: Resolves) -> Broker:
    # No age limit: a market close of a blind position fills at the last price
    # seen, and the fill (and the API answer) carries that price's true age.
    return PaperBroker(quote, max_age=math.inf)


def _http(cfg: Config, quote: QuoteSource, resolver: Resolves) -> Broker:
    b = cfg.broker
    return HttpBroker(b.url, b.token, b.timeout, resolver)


KINDS: Mapping[str, BrokerFactory] = {"paper": _paper, "http": _http}


def make_broker(cfg: Config, *, quote: QuoteSource, resolver: Resolves) -> Broker:
    """The broker `cfg.broker.kind` names (config validation has checked it is in KINDS)."""
    return KINDS[cfg.broker.kind](cfg, quote, resolver)
