"""The `http` broker: the user's own trading backend (SPEC §7), through the resolver ladder.

An answer says one of three things: filled (perhaps in part), refused
(`rejected`, `cancelled`, a 4xx: BrokerRefused, that attempt is over), or
nothing final (a timeout, a 5xx, a malformed or pending answer:
BrokerUnavailable, the same id may be sent again). `GET /positions`, when the
backend serves it, tells what it holds (SPEC §12); a 404 there means it cannot.
"""

from __future__ import annotations

import http.client
import logging
import time
from typing import Any
from urllib.parse import quote as url_quote
from urllib.parse import urlsplit

from tradeguard.brokers.base import CloseOrder, Fill, Holding
from tradeguard.errors import BrokerError, BrokerRefused, BrokerUnavailable, ResolverError
from tradeguard.net.http import HttpClient, Resolves, Response
from tradeguard.positions import Side
from tradeguard.prices import valid_price

logger = logging.getLogger(__name__)

REFUSED = ("rejected", "cancelled")
NO_MIRROR_RECHECK = 300.0  # seconds before a backend that had no GET /positions is asked again
RETRYABLE_4XX = (408, 425, 429)  # "try again later", not "no"


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
        try:
            # Kept alive: no DNS and no TLS handshake between a breach and its order (A8).
            self._client = HttpClient(resolver, timeout=timeout, ca_file=ca_file)
        except (OSError, ValueError) as exc:
            raise BrokerError(f"broker.ca_file {ca_file!r}: {exc}") from exc
        self._no_mirror_until = 0.0

    def close(self) -> None:
        """Close the kept-alive connections."""
        self._client.close()

    def place(self, order: CloseOrder) -> Fill:
        body = {
            "client_order_id": order.client_order_id,
            "symbol": order.symbol,
            "side": order.side,
            "quantity": wire_quantity(order.quantity),
            "type": "market",
            "reason": order.reason,
        }
        what = f"order {order.client_order_id} ({order.side} {order.quantity:g} {order.symbol})"
        resp = self._send("POST", "/orders", body, what)
        self._check_status(resp, what)
        return self._fill(resp, what)

    def lookup(self, client_order_id: str) -> Fill | None:
        what = f"lookup of order {client_order_id}"
        path = f"/orders/{url_quote(client_order_id, safe='')}"
        resp = self._send("GET", path, None, what)
        if resp.status == 404:
            return None
        self._check_status(resp, what)
        return self._fill(resp, what)

    def holding(self, symbol: str, product: str | None = None) -> Holding | None:
        """Net holding of `symbol` from GET /positions; None if the backend has no such route."""
        if time.monotonic() < self._no_mirror_until:
            return None
        what = f"positions (for {symbol})"
        resp = self._send("GET", "/positions", None, what)
        if resp.status == 404:
            self._no_mirror_until = time.monotonic() + NO_MIRROR_RECHECK
            logger.info("Broker %s serves no GET /positions: closes cannot be checked against"
                        " what it holds", self._host)
            return None
        if resp.status != 200:
            raise self._fail(what, f"answered HTTP {resp.status}: {_excerpt(resp)}")
        held = _net_holding(resp.body, symbol)
        if held is None:
            raise self._fail(what, f"answer is not a positions list: {_excerpt(resp)}")
        return held

    def _check_status(self, resp: Response, what: str) -> None:
        if resp.status == 200:
            return
        detail = f"answered HTTP {resp.status}: {_excerpt(resp)}"
        refused = 400 <= resp.status < 500 and resp.status not in RETRYABLE_4XX
        raise self._fail(what, detail, refused=refused)

    def _send(self, method: str, path: str, body: Any, what: str) -> Response:
        logger.debug("Broker %s %s%s for %s", method, self._host, path, what)
        try:
            # idempotent: the same client_order_id sent twice is one order (SPEC §7).
            return self._client.request_json(
                method, self._base + path, body=body,
                headers={"Authorization": f"Bearer {self._token}"}, idempotent=True,
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
        status = answer.get("status")
        filled = _filled_quantity(answer)
        if status in REFUSED and not filled:
            raise self._fail(what, f"order status is {status!r}", refused=True)
        if status not in ("filled", "partially_filled", *REFUSED):
            raise self._fail(what, f"order status is {status!r}, not 'filled'")
        if status != "filled" and filled is None:
            raise self._fail(what, f"a {status!r} answer needs a filled_quantity above 0")
        order_id = answer.get("order_id")
        if not isinstance(order_id, str | int) or isinstance(order_id, bool) or order_id == "":
            raise self._fail(what, f"answer has no valid order_id: {_excerpt(resp)}")
        price: Any = answer.get("fill_price")
        if not valid_price(price):
            raise self._fail(what, f"answer has an invalid fill_price {price!r}")
        return Fill(str(order_id), float(price), None, None if status == "filled" else filled)

    def _fail(self, what: str, detail: str, *, refused: bool = False) -> BrokerError:
        """A BrokerUnavailable (or BrokerRefused) naming the broker host, the token scrubbed out."""
        message = f"broker {self._host}: {what} failed: {detail}"
        if self._token:
            message = message.replace(self._token, "[token]")
        logger.warning("%s", message)
        return BrokerRefused(message) if refused else BrokerUnavailable(message)


def wire_quantity(quantity: float) -> float | int:
    """A whole quantity goes out as an integer: strictly typed backends refuse 10.0 (A13)."""
    return int(quantity) if float(quantity).is_integer() else quantity


def _filled_quantity(answer: dict[str, Any]) -> float | None:
    value: Any = answer.get("filled_quantity")
    return float(value) if valid_price(value) else None


def _net_holding(body: Any, symbol: str) -> Holding | None:
    """The net holding of `symbol` in a GET /positions answer; None if the answer is malformed."""
    rows = body.get("positions") if isinstance(body, dict) else None
    if not isinstance(rows, list):
        return None
    net = 0.0
    for row in rows:
        if not isinstance(row, dict) or row.get("side") not in ("long", "short"):
            return None
        quantity: Any = row.get("quantity")
        if not (quantity == 0 or valid_price(quantity)):
            return None
        if str(row.get("symbol", "")).strip().upper() == symbol:
            net += float(quantity) if row["side"] == "long" else -float(quantity)
    return Holding(Side.LONG if net >= 0 else Side.SHORT, abs(net))


def _excerpt(resp: Response, limit: int = 160) -> str:
    """The broker's own error message if it gave one, else the start of the body."""
    body = resp.body
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])[:limit]
    return resp.text[:limit] or "(empty body)"
