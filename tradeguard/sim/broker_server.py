"""A real HTTP broker on loopback that speaks SPEC §7, with faults switchable at run time.

Stands in for a user's trading backend in tests, the demo and chaos runs.
Orders are idempotent by client order id. The faults are those a real broker
shows: errors (`fail_next`), no answer (`hang`), gone (`down`/`up`) and a
slow answer (`slow`). A slow answer records the order *before* waiting, so a
client killed mid-request leaves an order at the broker that it must find by
reconciliation rather than place twice. Final answers other than a fill:
`reject_next` (status `rejected`) and `partial_next` (`partially_filled`).

Once told what it holds (`hold`), it serves `GET /positions` with its net
holdings, moves them with every fill, and can be closed by hand
(`close_by_hand`), as an operator would at a real broker. Until then
`GET /positions` is 404: a backend without a mirror.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from tradeguard.prices import valid_price
from tradeguard.sim.service import SimService

logger = logging.getLogger(__name__)

DEFAULT_PRICE = 100.0
ORDER_FIELDS = ("client_order_id", "symbol", "side", "quantity", "type", "reason")
MAX_BODY = 1 << 20


class _Server(ThreadingHTTPServer):
    def __init__(self, port: int, sim: BrokerServer, tls: ssl.SSLContext | None) -> None:
        self.sim = sim
        self.tls = tls
        self._in_flight: list[threading.Thread] = []
        self._open: set[Any] = set()  # accepted connections not yet closed (keep-alive)
        self._open_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self._open_lock:
            self._open.add(request)
        return True

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Cut every open connection, as a restarting server does to kept-alive clients."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):  # already gone
                sock.shutdown(socket.SHUT_RDWR)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Daemon threads, so a request left hanging cannot hold the interpreter
        # at exit; tracked, so that server_close() waits for those in flight.
        thread = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), daemon=True
        )
        self._in_flight = [t for t in self._in_flight if t.is_alive()]
        self._in_flight.append(thread)
        thread.start()

    def server_close(self) -> None:
        super().server_close()
        for thread in self._in_flight:
            thread.join()

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        # The TLS handshake runs here, in the request's own thread, so a
        # client that never completes it cannot stall the accept loop.
        request.settimeout(_Handler.timeout)
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except OSError:
            logger.debug("Broker sim: TLS handshake with %s failed", client_address)
            return
        with self._open_lock:
            self._open.add(conn)  # the plain socket was detached into it
        with conn:
            super().finish_request(conn, client_address)
        with self._open_lock:
            self._open.discard(conn)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("Broker sim: connection from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    timeout = 5.0  # a silent client cannot hold a thread (and stop()) for long
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
    server: _Server

    def setup(self) -> None:
        super().setup()
        if self.server.sim.keep_alive:
            self.protocol_version = "HTTP/1.1"  # connections stay open between requests

    def do_GET(self) -> None:
        self._serve(b"")

    def do_POST(self) -> None:
        length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY)
        self._serve(self.rfile.read(length))

    def _serve(self, body: bytes) -> None:
        status, text = self.server.sim.answer(
            self.command,
            self.path,
            body,
            host=self.headers.get("Host", ""),
            authorization=self.headers.get("Authorization", ""),
        )
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("Broker sim: " + format, *args)


class BrokerServer(SimService):
    """The broker on 127.0.0.1, an ephemeral port kept across `down()`/`up()`.

    `price_for` gives the fill price of a symbol: a function, a dict (missing
    symbols fill at 100.0), or None for 100.0 everywhere. `orders` maps each
    client order id to the order as recorded; `requests` counts every request,
    `calls` names each ("POST /orders") and `hosts` keeps each one's Host
    header. With `keep_alive`, it speaks HTTP/1.1 and keeps connections open
    between requests, as real backends do; `down()` and `stop()` then also cut
    the open connections.
    """

    def __init__(
        self,
        token: str,
        *,
        price_for: Callable[[str], float] | Mapping[str, float] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        keep_alive: bool = False,
    ) -> None:
        self.token = token
        self.keep_alive = keep_alive
        self._price_for = _price_function(price_for)
        self._tls = ssl_context
        self._lock = threading.Lock()
        self.orders: dict[str, dict[str, Any]] = {}
        self.requests = 0
        self.calls: list[str] = []  # "METHOD /path" of every request, in order
        self.hosts: list[str] = []
        self._failures = 0
        self._failure: tuple[int, str] = (500, "")
        self._rejects = 0
        self._partials: list[float] = []
        self.holdings: dict[str, float] | None = None  # symbol -> net quantity (short < 0)
        self._hang: float | bool = False
        self._slow = 0.0
        self._release = threading.Event()
        self._port = 0
        self._live: tuple[_Server, threading.Thread] | None = None
        self._retired: list[_Server] = []

    # Life cycle -----------------------------------------------------------

    def start(self) -> BrokerServer:
        self.up()
        return self

    def stop(self) -> None:
        """Release hung requests, stop listening, and wait for every request thread."""
        with self._lock:
            self._hang, self._slow = False, 0.0
            self._release.set()
        if self._live is not None:
            self.down()
        for server in self._retired:
            server.server_close()
        self._retired.clear()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self._port}"

    @property
    def order_count(self) -> int:
        with self._lock:
            return len(self.orders)

    # Faults ---------------------------------------------------------------

    def fail_next(self, n: int, status: int = 500, body: str | None = None) -> None:
        """Answer the next `n` requests with `status` and `body` (raw text) instead."""
        text = body if body is not None else json.dumps({"error": f"simulated {status}"})
        with self._lock:
            self._failures, self._failure = n, (status, text)

    def reject_next(self, n: int = 1) -> None:
        """The next `n` new orders are rejected (status `rejected`), as at a circuit limit."""
        with self._lock:
            self._rejects = n

    def partial_next(self, *filled: float) -> None:
        """The next new orders fill only these quantities each (status `partially_filled`)."""
        with self._lock:
            self._partials = list(filled)

    def hold(self, symbol: str, side: str, quantity: float) -> None:
        """The broker holds this (and from now serves GET /positions)."""
        with self._lock:
            self.holdings = dict(self.holdings or {})
            self.holdings[symbol] = quantity if side == "long" else -quantity

    def close_by_hand(self, symbol: str) -> None:
        """The operator closed the position at the broker, outside TradeGuard."""
        self.hold(symbol, "long", 0.0)

    def held(self, symbol: str) -> float:
        """Net quantity held (short < 0)."""
        with self._lock:
            return (self.holdings or {}).get(symbol, 0.0)

    def hang(self, seconds: float | bool = True) -> None:
        """Hold every request unanswered: True until `hang(False)` or stop, else `seconds`."""
        with self._lock:
            self._hang = seconds
            if not seconds:
                self._release_waiting()

    def slow(self, seconds: float) -> None:
        """Record each order first, then wait `seconds` before answering it (0 to stop).

        Only orders (POST /orders) are slow: lookups and GET /positions answer at once.
        """
        with self._lock:
            self._slow = seconds
            if not seconds:
                self._release_waiting()

    def down(self) -> None:
        """Stop listening: new connections are refused. Requests in flight carry on."""
        if self._live is None:
            return
        server, thread = self._live
        self._live = None
        server.shutdown()
        thread.join()
        server.socket.close()
        if self.keep_alive:
            server.drop_connections()
        self._retired.append(server)

    def up(self) -> None:
        """Listen again, on the same port as before."""
        if self._live is not None:
            return
        server = _Server(self._port, self, self._tls)
        self._port = server.server_address[1]
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"broker-sim-{self._port}",
            daemon=True,
        )
        thread.start()
        self._live = (server, thread)

    def _release_waiting(self) -> None:
        """Wake every held request; callers hold the lock."""
        self._release.set()
        self._release = threading.Event()

    # Requests -------------------------------------------------------------

    def answer(
        self, method: str, path: str, body: bytes, *, host: str, authorization: str
    ) -> tuple[int, str]:
        """(status, body text) for one request, faults applied."""
        with self._lock:
            self.requests += 1
            self.calls.append(f"{method} {path.split('?', 1)[0]}")
            self.hosts.append(host)
            hang, release = self._hang, self._release
        if hang is True:
            release.wait()
        elif hang:
            release.wait(hang)
        with self._lock:
            if self._failures > 0:
                self._failures -= 1
                return self._failure
        if self._authorized(authorization):
            status, payload = self._route(method, path.split("?", 1)[0], body)
        else:
            status, payload = 401, _error("missing or wrong bearer token")
        with self._lock:
            slow, release = self._slow, self._release
        if slow and method == "POST":
            release.wait(slow)
        return status, json.dumps(payload)

    def _authorized(self, header: str) -> bool:
        return hmac.compare_digest(header.encode(), f"Bearer {self.token}".encode())

    def _route(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if method == "POST" and path == "/orders":
            return self._place(body)
        if method == "GET" and path == "/positions":
            return self._positions()
        if method == "GET" and path.startswith("/orders/"):
            with self._lock:
                order = self.orders.get(unquote(path.removeprefix("/orders/")))
            return (200, _fill(order)) if order is not None else (404, _error("unknown order"))
        return 404, _error(f"no route {method} {path}")

    def _place(self, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            request = json.loads(body)
        except ValueError:
            return 400, _error("body is not JSON")
        problem = _order_problem(request)
        if problem:
            return 400, _error(problem)
        with self._lock:
            order = self.orders.get(request["client_order_id"])
            if order is None:
                order = {key: request[key] for key in ORDER_FIELDS}
                order.update(order_id=f"sim-{len(self.orders) + 1}", **self._outcome(request))
                self.orders[request["client_order_id"]] = order
                self._book(order)
        return 200, _fill(order)

    def _outcome(self, request: dict[str, Any]) -> dict[str, Any]:
        """How a new order ends; callers hold the lock."""
        if self._rejects > 0:
            self._rejects -= 1
            return {"status": "rejected", "fill_price": None}
        price = self._price_for(request["symbol"])
        if self._partials:
            filled = self._partials.pop(0)
            return {"status": "partially_filled", "filled_quantity": filled, "fill_price": price}
        return {"status": "filled", "filled_quantity": request["quantity"], "fill_price": price}

    def _book(self, order: dict[str, Any]) -> None:
        """A fill moves what the broker holds; callers hold the lock."""
        if self.holdings is None or order["status"] == "rejected":
            return
        signed = order["filled_quantity"] * (1 if order["side"] == "buy" else -1)
        self.holdings[order["symbol"]] = self.holdings.get(order["symbol"], 0.0) + signed

    def _positions(self) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if self.holdings is None:
                return 404, _error("no route GET /positions")
            rows = [{"symbol": symbol, "side": "long" if net >= 0 else "short",
                     "quantity": abs(net)} for symbol, net in self.holdings.items()]
        return 200, {"positions": rows}


def _price_function(
    price_for: Callable[[str], float] | Mapping[str, float] | None,
) -> Callable[[str], float]:
    if price_for is None:
        return lambda _symbol: DEFAULT_PRICE
    if isinstance(price_for, Mapping):
        prices = dict(price_for)
        return lambda symbol: prices.get(symbol, DEFAULT_PRICE)
    return price_for


def _order_problem(request: Any) -> str:
    """What is wrong with an order request, or "" if nothing."""
    if not isinstance(request, dict):
        return "body must be a JSON object"
    missing = [key for key in ORDER_FIELDS if key not in request]
    if missing:
        return f"missing fields: {', '.join(missing)}"
    cid = request["client_order_id"]
    checks = (
        (isinstance(cid, str) and cid != "", "client_order_id must be a non-empty string"),
        (request["side"] in ("sell", "buy"), "side must be 'sell' or 'buy'"),
        (request["type"] == "market", "type must be 'market'"),
        (valid_price(request["quantity"]), "quantity must be a finite number > 0"),
    )
    return next((problem for ok, problem in checks if not ok), "")


def _fill(order: dict[str, Any]) -> dict[str, Any]:
    keys = ("client_order_id", "order_id", "status", "fill_price", "filled_quantity")
    return {key: order[key] for key in keys if key in order}


def _error(message: str) -> dict[str, Any]:
    return {"status": "error", "error": message}
