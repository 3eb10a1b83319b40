"""Brokers: where a close order goes and the fill that comes back.

Two kinds (SPEC §7). The paper broker fills at the freshest price TradeGuard
has and says how old that price was. The HTTP broker sends the order to the
user's own backend through the resolver ladder. Both are idempotent on the
client order id: the same id sent twice is one order, which is what lets the
monitor retry a close and reconcile a `closing` position after a restart.
Every failure is a BrokerError whose message never carries the broker token.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote as url_quote
from urllib.parse import urlsplit

from tradeguard.errors import BrokerError, ResolverError
from tradeguard.http_client import Resolves, Response, request_json
from tradeguard.prices import Quote, Tick, valid_price

logger = logging.getLogger(__name__)


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


class PaperBroker:
    """Fills at the freshest price it has: the cached quote or the order's hint.

    Prices older than `max_age` are refused. The service passes no limit: a
    market order fills whatever the market does, so a close of a blind
    position fills at the last price seen, and the fill reports its true age.

    Its memory of orders lives in this process only. After a restart, `lookup`
    of a `closing` position's client order id returns None and the caller
    sends the order again, which is right for paper: no order ever left.
    """

    def __init__(
        self,
        quote: Callable[[str], Quote | None],
        clock: Callable[[], float] = time.time,
        *,
        max_age: float = 300.0,  # prices older than this are not filled at
        on_order: Callable[[CloseOrder, float], None] | None = None,
    ) -> None:
        self._quote = quote
        self._clock = clock
        self._max_age = max_age
        self.on_order = on_order  # called with (order, time.monotonic() at arrival)
        self.orders: list[str] = []  # client order ids of filled orders, in arrival order
        self._fills: dict[str, Fill] = {}
        self._lock = threading.Lock()

    def place(self, order: CloseOrder) -> Fill:
        arrived = time.monotonic()
        with self._lock:
            known = self._fills.get(order.client_order_id)
            if known is not None:
                return known
            price, age = self._freshest(order)
            fill = Fill(f"paper-{len(self._fills) + 1}", price, age)
            self._fills[order.client_order_id] = fill
            self.orders.append(order.client_order_id)
        if self.on_order is not None:
            self.on_order(order, arrived)
        return fill

    def lookup(self, client_order_id: str) -> Fill | None:
        with self._lock:
            return self._fills.get(client_order_id)

    def _freshest(self, order: CloseOrder) -> tuple[float, float]:
        """(price, age) of the most recently received usable price for the symbol."""
        now = self._clock()
        candidates: list[tuple[float, float]] = []  # (received_at, price)
        cached = self._quote(order.symbol)
        if cached is not None and now - cached.received_at <= self._max_age:
            candidates.append((cached.received_at, cached.price))
        hint = order.hint
        if (
            hint is not None
            and hint.symbol == order.symbol
            and valid_price(hint.price)
            and now - hint.received_at <= self._max_age
        ):
            candidates.append((hint.received_at, hint.price))
        if not candidates:
            raise BrokerError(f"no usable price for {order.symbol}")
        received_at, price = max(candidates)
        return price, max(0.0, now - received_at)


class HttpBroker:
    """The user's own trading backend over HTTP(S), reached through the resolver ladder."""

    def __init__(
        self,
        base_url: str,
        token: str,
        timeout: float,
        resolver: Resolves | None,
        ca_file: str = "",
    ) -> None:
        # A CR or LF in a header value makes http.client raise with the value in
        # its message; refusing such a token here keeps it out of every error.
        if not token.isprintable() or not token.isascii():
            raise BrokerError("broker token has characters not allowed in an HTTP header")
        self._base = base_url.rstrip("/")
        self._host = urlsplit(base_url).hostname or base_url
        self._token = token
        self._timeout = timeout
        self._resolver = resolver
        self._ca_file = ca_file

    def place(self, order: CloseOrder) -> Fill:
        body = {
            "client_order_id": order.client_order_id,
            "symbol": order.symbol,
            "side": order.side,
            "quantity": order.quantity,
            "type": "market",
            "reason": order.reason,
        }
        what = f"order {order.client_order_id} ({order.side} {order.quantity} {order.symbol})"
        resp = self._send("POST", "/orders", body, what)
        if resp.status != 200:
            raise self._fail(what, f"answered HTTP {resp.status}: {_excerpt(resp)}")
        return self._fill(resp, what)

    def lookup(self, client_order_id: str) -> Fill | None:
        what = f"lookup of order {client_order_id}"
        path = f"/orders/{url_quote(client_order_id, safe='')}"
        resp = self._send("GET", path, None, what)
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise self._fail(what, f"answered HTTP {resp.status}: {_excerpt(resp)}")
        return self._fill(resp, what)

    def _send(self, method: str, path: str, body: Any, what: str) -> Response:
        logger.debug("Broker %s %s%s for %s", method, self._host, path, what)
        try:
            return request_json(
                method,
                self._base + path,
                body=body,
                headers={"Authorization": f"Bearer {self._token}"},
                timeout=self._timeout,
                resolver=self._resolver,
                ca_file=self._ca_file,
            )
        except ResolverError as exc:
            raise self._fail(what, f"cannot resolve the broker host: {exc}") from exc
        except TimeoutError as exc:
            raise self._fail(what, f"no answer within {self._timeout:g}s") from exc
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise self._fail(what, f"{type(exc).__name__}: {exc}") from exc

    def _fill(self, resp: Response, what: str) -> Fill:
        answer = resp.body
        if not isinstance(answer, dict):
            raise self._fail(what, f"answer is not a JSON object: {_excerpt(resp)}")
        order_id = answer.get("order_id")
        price: Any = answer.get("fill_price")
        if answer.get("status") != "filled":
            raise self._fail(what, f"order status is {answer.get('status')!r}, not 'filled'")
        if not isinstance(order_id, str | int) or isinstance(order_id, bool) or order_id == "":
            raise self._fail(what, f"answer has no valid order_id: {_excerpt(resp)}")
        if not valid_price(price):
            raise self._fail(what, f"answer has an invalid fill_price {price!r}")
        return Fill(str(order_id), float(price), None)

    def _fail(self, what: str, detail: str) -> BrokerError:
        """A BrokerError naming the broker host, with the token scrubbed out."""
        message = f"broker {self._host}: {what} failed: {detail}"
        if self._token:
            message = message.replace(self._token, "[token]")
        logger.warning("%s", message)
        return BrokerError(message)


def _excerpt(resp: Response, limit: int = 160) -> str:
    """The broker's own error message if it gave one, else the start of the body."""
    body = resp.body
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])[:limit]
    return resp.text[:limit] or "(empty body)"
