"""The `http` broker: the user's own trading backend (SPEC §7), through the resolver ladder."""

from __future__ import annotations

import http.client
import logging
from typing import Any
from urllib.parse import quote as url_quote
from urllib.parse import urlsplit

from tradeguard.brokers.base import CloseOrder, Fill
from tradeguard.errors import BrokerError, ResolverError
from tradeguard.net.http import Resolves, Response, request_json
from tradeguard.prices import valid_price

logger = logging.getLogger(__name__)


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
