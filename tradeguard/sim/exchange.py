"""A simulated exchange: a real WebSocket price feed on loopback, with switchable failures.

Tests, the demo and the benchmark connect to it exactly as to a real feed
(wire format "json", SPEC §5), optionally over TLS. It records what clients
send, pushes ticks on demand or as a random walk, can be stopped and
restarted on the same port, and can play a half-open connection.

Half-open: the TCP connections stay up but nothing flows. The exchange sends
nothing, and the bytes clients send (pings included) are held unread:
websockets answers pings on its own reading thread, so each connection's
socket is wrapped so that a read completes only while traffic flows.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

from websockets.exceptions import ConnectionClosed
from websockets.server import ServerProtocol
from websockets.sync.server import Server, ServerConnection, serve

from tradeguard.sim.service import SimService

logger = logging.getLogger(__name__)


class SimExchange(SimService):
    """A WebSocket feed at ws(s)://HOST:PORT/ws; every method is safe from any thread.

    Sends go to every connected client and return how many got the frame. A
    client that stops reading makes a send block once its socket buffers are
    full, as a real server would.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        close_timeout: float = 1.0,
    ) -> None:
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._close_timeout = close_timeout
        self._changed = threading.Condition()  # guards the records and client set below
        self._clients: set[ServerConnection] = set()
        self._subscriptions: list[list[str]] = []
        self._host_headers: list[str] = []
        self._accepted = 0
        # Held while a frame goes out, so that half_open(True) is a clean cut.
        self._send_lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._walk: _RandomWalk | None = None

    # Lifecycle -----------------------------------------------------------

    def start(self) -> SimExchange:
        """Listen (on the port of the previous run after a restart)."""
        if self._server is not None:
            raise RuntimeError("SimExchange is already running")
        self._flowing.set()
        server = serve(
            self._handle, self._host, self._port,
            ssl=self._ssl,
            compression=None,
            ping_interval=None,  # the client under test does the pinging
            close_timeout=self._close_timeout,
            create_connection=_gated_connection(self._flowing),
        )
        self._port = int(server.socket.getsockname()[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name=f"sim-exchange-{self._port}", daemon=True
        )
        self._thread.start()
        logger.debug("Simulated exchange listening on %s", self.url_for(self._host))
        return self

    def stop(self) -> None:
        """Stop the walk, close every connection and the listener; new connections are refused."""
        self.stop_walk()
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._flowing.set()  # held reads must finish for connections to close
        server.shutdown()
        thread.join()
        self._server = self._thread = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def port(self) -> int:
        if self._port == 0:
            raise RuntimeError("SimExchange is not started")
        return self._port

    def url_for(self, host: str) -> str:
        """The feed URL with `host` as its hostname, e.g. a name the resolver maps here."""
        scheme = "wss" if self._ssl is not None else "ws"
        return f"{scheme}://{host}:{self.port}/ws"

    # What clients did ----------------------------------------------------

    @property
    def subscriptions(self) -> list[list[str]]:
        """The symbol list of every subscribe frame received, in order."""
        with self._changed:
            return [list(symbols) for symbols in self._subscriptions]

    @property
    def host_headers(self) -> list[str]:
        """The Host header of every accepted connection, in order."""
        with self._changed:
            return list(self._host_headers)

    @property
    def accepted(self) -> int:
        """WebSocket connections accepted since construction, across restarts."""
        with self._changed:
            return self._accepted

    @property
    def connected(self) -> int:
        """WebSocket connections open now."""
        with self._changed:
            return len(self._clients)

    def wait_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Wait until `condition()` holds, re-checked whenever a client connects,
        disconnects or sends; False if `timeout` passed first."""
        with self._changed:
            return self._changed.wait_for(condition, timeout)

    # Sending -------------------------------------------------------------

    def send_raw(self, data: str | bytes) -> int:
        """Send one frame as given (str: text, bytes: binary) to every client."""
        with self._changed:
            clients = list(self._clients)
        sent = 0
        with self._send_lock:
            if not self._flowing.is_set():
                return 0
            for client in clients:
                try:
                    client.send(data)
                except ConnectionClosed:
                    continue
                sent += 1
        return sent

    def send_ticks(self, ticks: Iterable[tuple[str, float]]) -> int:
        """Send the ticks as one array frame; a running walk continues from these prices."""
        ticks = list(ticks)
        if (walk := self._walk) is not None:
            walk.move_to(ticks)
        return self.send_raw(json.dumps([_tick(symbol, price) for symbol, price in ticks]))

    def send_tick(self, symbol: str, price: float) -> int:
        """Send one tick as a single-object frame."""
        if (walk := self._walk) is not None:
            walk.move_to([(symbol, price)])
        return self.send_raw(json.dumps(_tick(symbol, price)))

    def half_open(self, on: bool) -> None:
        """Keep every TCP connection up but let nothing through, pings included (or resume)."""
        with self._send_lock:
            if on:
                self._flowing.clear()
            else:
                self._flowing.set()

    def start_walk(
        self, symbols: dict[str, float], interval: float, step_pct: float, seed: int | None = None
    ) -> None:
        """Every `interval` seconds, move each price by up to ±`step_pct` percent and
        send all of them as one array frame."""
        walk = _RandomWalk(self, symbols, interval, step_pct, seed)
        with self._changed:
            previous, self._walk = self._walk, walk
        if previous is not None:
            previous.stop()

    def stop_walk(self) -> None:
        with self._changed:
            walk, self._walk = self._walk, None
        if walk is not None:
            walk.stop()

    # Serving -------------------------------------------------------------

    def _handle(self, client: ServerConnection) -> None:
        host = client.request.headers.get("Host", "") if client.request is not None else ""
        with self._changed:
            self._clients.add(client)
            self._accepted += 1
            self._host_headers.append(host)
            self._changed.notify_all()
        try:
            for message in client:
                self._record(message)
        except ConnectionClosed:
            pass  # a client going away, cleanly or not, is what a feed sees every day
        finally:
            with self._changed:
                self._clients.discard(client)
                self._changed.notify_all()

    def _record(self, message: str | bytes) -> None:
        try:
            frame = json.loads(message)
        except (ValueError, RecursionError):
            logger.debug("Simulated exchange ignored a frame that is not JSON: %.80r", message)
            return
        if not isinstance(frame, dict) or frame.get("action") != "subscribe":
            logger.debug("Simulated exchange ignored a frame: %.80r", message)
            return
        symbols = frame.get("symbols")
        if not isinstance(symbols, list):
            logger.debug("Simulated exchange ignored a frame: %.80r", message)
            return
        with self._changed:
            self._subscriptions.append([str(symbol) for symbol in symbols])
            self._changed.notify_all()


def _tick(symbol: str, price: float) -> dict[str, Any]:
    return {"symbol": symbol, "price": price, "ts": time.time()}


class _RandomWalk:
    """A thread that moves prices at random and sends them as one frame per interval."""

    def __init__(
        self,
        exchange: SimExchange,
        symbols: dict[str, float],
        interval: float,
        step_pct: float,
        seed: int | None,
    ) -> None:
        self._exchange = exchange
        self._prices = dict(symbols)
        self._lock = threading.Lock()
        self._interval = interval
        self._step = step_pct / 100
        self._rng = random.Random(seed)  # noqa: S311 - a simulation, not cryptography
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sim-exchange-walk", daemon=True)
        self._thread.start()

    def move_to(self, ticks: Iterable[tuple[str, float]]) -> None:
        with self._lock:
            for symbol, price in ticks:
                if symbol in self._prices:
                    self._prices[symbol] = price

    def stop(self) -> None:
        self._stopping.set()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            self._exchange.send_raw(json.dumps([_tick(s, p) for s, p in self._step_all()]))

    def _step_all(self) -> list[tuple[str, float]]:
        with self._lock:
            for symbol, price in self._prices.items():
                move = self._rng.uniform(-self._step, self._step)
                self._prices[symbol] = round(price * (1 + move), 4)
            return list(self._prices.items())


class _GatedSocket:
    """A connection's socket whose reads are held while `flowing` is clear.

    websockets reads and answers pings on a thread of its own, so holding the
    bytes here is what keeps a half-open exchange from answering them. Data
    read when the gate closes is held too, so no ping slips through.
    """

    def __init__(self, sock: socket.socket, flowing: threading.Event) -> None:
        self._sock = sock
        self._flowing = flowing

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = self._sock.recv(bufsize, flags)
        self._flowing.wait()
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _gated_connection(flowing: threading.Event) -> type[ServerConnection]:
    """A ServerConnection class (websockets' hook for this) whose reads obey `flowing`."""

    class GatedConnection(ServerConnection):
        def __init__(
            self, sock: socket.socket, protocol: ServerProtocol, server: Server, **kwargs: Any
        ) -> None:
            gated = cast(socket.socket, _GatedSocket(sock, flowing))  # duck-typed stand-in
            super().__init__(gated, protocol, server, **kwargs)

    return GatedConnection
