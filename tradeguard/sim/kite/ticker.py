"""Kite's WebSocket ticker on loopback (SPEC §10, brokers.md §1).

The handshake checks `api_key` and `access_token` in the URL query and
answers 403 when they are wrong, as Kite does after the morning expiry.
Clients send `{"a": "subscribe" | "unsubscribe" | "mode", "v": ...}` text
frames; a new subscription starts in quote mode. Prices go out as binary
frames in each client's mode per token; 1-byte heartbeats while idle; order
changes as `{"type": "order", "data": {...}}` text frames to every client.
"""

from __future__ import annotations

import http
import json
import logging
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve

from tradeguard.sim.kite.book import KiteBook
from tradeguard.sim.kite.packets import HEARTBEAT, MODES, Quote, frame, packet

logger = logging.getLogger(__name__)

MAX_TOKENS = 3000  # per connection (kite docs /websocket)
MAX_CONNECTIONS = 3  # per api_key (same)


class KiteTickerServer:
    """The ticker half of the stand-in; every method is safe from any thread."""

    def __init__(self, book: KiteBook, *, port: int = 0, ssl_context: ssl.SSLContext | None = None,
                 heartbeat_interval: float | None = 1.0,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self._book = book
        self._max_connections = max_connections
        self._port = port
        self._ssl = ssl_context
        self._heartbeat = heartbeat_interval
        self._changed = threading.Condition()
        self._clients: dict[ServerConnection, dict[int, str]] = {}  # token -> mode
        self.requests: list[dict[str, Any]] = []  # every text frame received, parsed
        self.refused = 0  # handshakes answered 403
        self.accepted = 0
        self._silent = threading.Event()
        self._stopping = threading.Event()
        self._server: Server | None = None
        self._threads: list[threading.Thread] = []
        book.price_listeners.append(self.send_quote)
        book.order_listeners.append(self.send_order_update)

    # Lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        server = serve(self._handle, "127.0.0.1", self._port, ssl=self._ssl, compression=None,
                       ping_interval=None, close_timeout=1.0, process_request=self._check)
        self._port = int(server.socket.getsockname()[1])
        self._server = server
        self._stopping.clear()
        self._spawn(server.serve_forever, "kite-ticker")
        if self._heartbeat:
            self._spawn(self._beat, "kite-ticker-heartbeat")

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        for thread in self._threads:
            thread.join()
        self._threads = []

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=f"{name}-{self._port}", daemon=True)
        self._threads.append(thread)
        thread.start()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """The `feed.url` (without the query TradeGuard adds)."""
        return f"{'wss' if self._ssl else 'ws'}://127.0.0.1:{self._port}/"

    # What clients did ----------------------------------------------------------

    @property
    def connected(self) -> int:
        with self._changed:
            return len(self._clients)

    def subscriptions(self) -> list[dict[int, str]]:
        """Each open connection's tokens and their modes."""
        with self._changed:
            return [dict(tokens) for tokens in self._clients.values()]

    def wait_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(condition, timeout)

    # Sending -------------------------------------------------------------------

    def send_quote(self, quote: Quote) -> int:
        """Send one tick to every client subscribed to its token, in that client's mode."""
        return self.send_quotes([quote])

    def send_quotes(self, quotes: Iterable[Quote]) -> int:
        """One frame per client holding each subscribed quote in the client's mode."""
        quotes = list(quotes)
        sent = 0
        for client, tokens in self._snapshot():
            packets = [packet(q, tokens[q.token]) for q in quotes if q.token in tokens]
            if packets and self._send(client, frame(packets)):
                sent += 1
        return sent

    def send_raw(self, data: bytes | str) -> int:
        """One frame as given (bytes: binary, str: text) to every client."""
        return sum(self._send(client, data) for client, _ in self._snapshot())

    def send_order_update(self, order: dict[str, Any]) -> int:
        return self.send_raw(json.dumps({"type": "order", "id": "", "data": order}))

    def send_error(self, text: str) -> int:
        return self.send_raw(json.dumps({"type": "error", "data": text}))

    def send_message(self, text: str) -> int:
        return self.send_raw(json.dumps({"type": "message", "data": text}))

    def silent(self, on: bool) -> None:
        """Keep connections open but send nothing, heartbeats included (a dead feed)."""
        if on:
            self._silent.set()
        else:
            self._silent.clear()

    def drop_connections(self) -> None:
        for client, _ in self._snapshot():
            client.close(code=1001)

    def _snapshot(self) -> list[tuple[ServerConnection, dict[int, str]]]:
        with self._changed:
            return [(c, dict(t)) for c, t in self._clients.items()]

    def _send(self, client: ServerConnection, data: bytes | str) -> bool:
        if self._silent.is_set():
            return False
        try:
            client.send(data)
        except ConnectionClosed:
            return False
        return True

    def _beat(self) -> None:
        assert self._heartbeat is not None
        while not self._stopping.wait(self._heartbeat):
            self.send_raw(HEARTBEAT)

    # Serving -------------------------------------------------------------------

    def _check(self, connection: ServerConnection, request: Request) -> Response | None:
        query = parse_qs(urlsplit(request.path).query)
        api_key = (query.get("api_key") or [""])[-1]
        access_token = (query.get("access_token") or [""])[-1]
        with self._changed:
            if not self._book.check_auth(api_key, access_token):
                self.refused += 1
                self._changed.notify_all()
                return connection.respond(http.HTTPStatus.FORBIDDEN,
                                          "Invalid api_key or access_token\n")
            if len(self._clients) >= self._max_connections:
                # What Kite answers to a 4th connection is not documented; 429 is our choice.
                self.refused += 1
                self._changed.notify_all()
                return connection.respond(http.HTTPStatus.TOO_MANY_REQUESTS,
                                          "Maximum connections per api_key exceeded\n")
        return None

    def _handle(self, client: ServerConnection) -> None:
        with self._changed:
            self._clients[client] = {}
            self.accepted += 1
            self._changed.notify_all()
        try:
            for message in client:
                self._request(client, message)
        except ConnectionClosed:
            pass
        finally:
            with self._changed:
                self._clients.pop(client, None)
                self._changed.notify_all()

    def _request(self, client: ServerConnection, message: str | bytes) -> None:
        try:
            request = json.loads(message)
            action, value = request["a"], request["v"]
        except (ValueError, KeyError, TypeError):
            logger.debug("Kite ticker stand-in ignored a frame: %.80r", message)
            return
        with self._changed:
            self.requests.append(request)
            tokens = self._clients[client]
            over = _apply(tokens, action, value)
            self._changed.notify_all()
        if over:
            self._send(client, json.dumps({"type": "error", "data": (
                f"Subscription limit of {MAX_TOKENS} instruments per connection exceeded; "
                f"{over} not subscribed")}))


def _apply(tokens: dict[int, str], action: str, value: Any) -> int:
    """Kite's rules: subscribe starts in quote mode, mode changes only subscribed tokens, at
    most MAX_TOKENS a connection. Returns how many tokens the limit left out."""
    over = 0
    if action == "subscribe":
        for token in value:
            if int(token) in tokens or len(tokens) < MAX_TOKENS:
                tokens.setdefault(int(token), "quote")
            else:
                over += 1
    elif action == "unsubscribe":
        for token in value:
            tokens.pop(int(token), None)
    elif action == "mode" and len(value) == 2 and value[0] in MODES:
        for token in value[1]:
            if int(token) in tokens:
                tokens[int(token)] = value[0]
    return over
