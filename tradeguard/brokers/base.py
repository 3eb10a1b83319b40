"""What every broker speaks: a close order, its fill, and the `Broker` protocol.

Every broker is idempotent on the client order id: the same id sent twice is
one order, which is what lets the monitor retry a close and reconcile a
`closing` position after a restart. Every failure is a BrokerError whose
message never carries the broker token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tradeguard.prices import Tick


@dataclass(frozen=True)
class CloseOrder:
    """A market order that closes a position; `hint` is the tick that triggered it."""

    client_order_id: str
    symbol: str
    side: str  # "sell" closes a long, "buy" closes a short
    quantity: float
    reason: str
    hint: Tick | None = None


@dataclass(frozen=True)
class Fill:
    """A filled order; `price_age` is the age of the price a paper fill used."""

    order_id: str
    fill_price: float
    price_age: float | None


class Broker(Protocol):
    def place(self, order: CloseOrder) -> Fill:
        """Fill the order, or raise BrokerError. Same client order id, same Fill."""
        ...

    def lookup(self, client_order_id: str) -> Fill | None:
        """The fill of an order sent earlier; None if the broker never saw that id."""
        ...


