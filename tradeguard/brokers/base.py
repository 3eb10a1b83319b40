"""What every broker speaks: a close order, its fill, what it holds, and the `Broker` protocol.

Every broker is idempotent on the client order id: the same id sent twice is
one order, which is what lets the monitor retry a close and reconcile a
`closing` position after a restart. A failure is a BrokerUnavailable (a retry
may work, under the same id) or a BrokerRefused (that attempt is over; what is
still open needs a new id); neither message ever carries the broker token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tradeguard.positions import Side
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
    product: str | None = None  # the position's (Kite MIS/CNC/...); None: broker.product
    urgency: float = 0.0  # how far the price is past the stop (a fraction): worst goes first


@dataclass(frozen=True)
class Fill:
    """A filled (or partly filled) order.

    `quantity` is how much filled, None for the whole order. `price_age` is the
    age of the price a paper fill used (None from a real broker).
    """

    order_id: str
    fill_price: float
    price_age: float | None
    quantity: float | None = None

    def partial(self, ordered: float) -> bool:
        return self.quantity is not None and self.quantity < ordered - 1e-9


@dataclass(frozen=True)
class Holding:
    """What the broker holds of one symbol, net: `quantity` 0 means nothing."""

    side: Side
    quantity: float

    def on_side(self, side: Side) -> float:
        """How much of `side` the broker holds (0 when flat or the other way)."""
        return self.quantity if self.side is side else 0.0


class Broker(Protocol):
    def place(self, order: CloseOrder) -> Fill:
        """Fill the order, or raise BrokerError. Same client order id, same Fill."""
        ...

    def lookup(self, client_order_id: str) -> Fill | None:
        """The fill of an order sent earlier; None if the broker never saw that id.

        BrokerRefused if the broker refused that order.
        """
        ...

    def holding(self, symbol: str, product: str | None = None) -> Holding | None:
        """What the broker holds of `symbol` (in `product`, where it has products; None: the
        default); None if this broker cannot tell (SPEC §12)."""
        ...
