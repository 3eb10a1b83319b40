"""Brokers: where a close order goes and the fill that comes back.

`base` holds what every broker speaks (CloseOrder, Fill, the Broker
protocol); each kind lives in a module of its own, and each venue to come in
a package of its own (`kite/`, `upstox/`). `KINDS` is the registry that
`config.py` validates `broker.kind` against and `make_broker` builds from.
"""

from __future__ import annotations

from tradeguard.brokers.base import Broker, CloseOrder, Fill
from tradeguard.brokers.http import HttpBroker
from tradeguard.brokers.paper import PaperBroker

__all__ = ["Broker", "CloseOrder", "Fill", "HttpBroker", "PaperBroker"]
