"""The benchmark's price feed: a WebSocket server in a process of its own.

A plain socket server that speaks just enough RFC 6455 (the upgrade, then
websocket-client's ABNF framing), so `tradeguard bench` needs nothing the
service does not already install. It runs in a separate process so that
producing the stream never competes with the client for the GIL; the bench
drives it over a multiprocessing pipe with the jobs below.

A job waits for a client that has subscribed to every symbol the job sends,
then streams to the most recent such client. Times are `time.monotonic()`,
which on Linux is one clock for every process, so the bench compares them
with its own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from websocket import ABNF
from websocket._abnf import frame_buffer

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CHUNK = 1 << 16  # bytes per sendall, so a pong can go out between chunks
POOL_TICKS = 20_000  # distinct ticks in a throughput stream, which repeats them
SUBSCRIBE_WAIT = 30.0


@dataclass(frozen=True)
class Stream:
    """Send `ticks` ticks as fast as the client takes them, `frame_ticks` per frame."""

    prices: dict[str, float]
    ticks: int
    frame_ticks: int
    seed: int


@dataclass(frozen=True)
class Paced:
    """Offer `rate` ticks/s for `duration` s; every `breach_every` s the next
    breach from `breaches` (symbol, price) replaces a normal tick."""

    prices: dict[str, float]
    rate: float
    duration: float
    frame_ticks: int
    breaches: tuple[tuple[str, float], ...]
    breach_every: float
    seed: int


@dataclass(frozen=True)
class Done:
    """A job's outcome: when its first and last bytes went out, and each breach's send time."""

    first_sent: float
    last_sent: float
    ticks: int
    breaches_sent: tuple[tuple[str, float], ...] = ()
    error: str = ""


@dataclass
class _Client:
    sock: socket.socket
    subscribed: set[str] = field(default_factory=set)
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    open: bool = True

    def send(self, data: bytes | memoryview) -> None:
        with self.send_lock:
            self.sock.sendall(data)


class _Server:
    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.changed = threading.Condition()
        self.clients: list[_Client] = []

    # Connections ---------------------------------------------------------

    def accept_forever(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return  # the listener was closed: the server is stopping
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = _Client(sock)
        try:
            _handshake(sock)
            with self.changed:
                self.clients.append(client)
            self._read(client)
        except (OSError, ValueError):
            pass  # a client that goes away is not the server's problem
        finally:
            with self.changed:
                client.open = False
                if client in self.clients:
                    self.clients.remove(client)
                self.changed.notify_all()
            sock.close()

    def _read(self, client: _Client) -> None:
        frames = frame_buffer(client.sock.recv, True)
        while True:
            frame = frames.recv_frame()  # type: ignore[no-untyped-call]
            if frame.opcode == ABNF.OPCODE_TEXT:
                self._subscribe(client, frame.data)
            elif frame.opcode == ABNF.OPCODE_PING:
                client.send(_frame(frame.data, ABNF.OPCODE_PONG))
            elif frame.opcode == ABNF.OPCODE_CLOSE:
                client.send(_frame(frame.data[:2], ABNF.OPCODE_CLOSE))
                return

    def _subscribe(self, client: _Client, data: bytes) -> None:
        try:
            request = json.loads(data)
            symbols = request["symbols"] if request.get("action") == "subscribe" else []
        except (ValueError, AttributeError, KeyError, TypeError):
            return
        with self.changed:
            client.subscribed.update(str(s) for s in symbols)
            self.changed.notify_all()

    def wait_for_client(self, symbols: set[str]) -> _Client | None:
        """The newest client subscribed to all of `symbols`; None after SUBSCRIBE_WAIT."""

        def ready() -> _Client | None:
            return next((c for c in reversed(self.clients) if symbols <= c.subscribed), None)

        with self.changed:
            self.changed.wait_for(ready, SUBSCRIBE_WAIT)
            return ready()

    # Jobs ------------------------------------------------------------------

    def run(self, job: Stream | Paced) -> Done:
        client = self.wait_for_client(set(job.prices))
        if client is None:
            return Done(0.0, 0.0, 0, error="no client subscribed in time")
        try:
            if isinstance(job, Stream):
                return _stream(client, job)
            return _paced(client, job)
        except OSError as exc:
            return Done(0.0, 0.0, 0, error=f"client went away: {exc}")


def _handshake(sock: socket.socket) -> None:
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = sock.recv(4096)
        if not chunk:
            raise ValueError("closed during the handshake")
        request += chunk
    key = next((line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")), None)
    if key is None:
        raise ValueError("not a WebSocket upgrade")
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())  # noqa: S324 - RFC 6455
    sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")


def _frame(data: bytes | str, opcode: int = ABNF.OPCODE_TEXT) -> bytes:
    return ABNF(1, 0, 0, 0, opcode, 0, data).format()  # type: ignore[no-untyped-call]


class _Ticks:
    """Tick JSON objects with prices wandering within 1% of each symbol's base price."""

    def __init__(self, prices: dict[str, float], seed: int) -> None:
        self.symbols = sorted(prices)
        self.prices = prices
        self.rng = random.Random(seed)  # noqa: S311 - a simulation, not cryptography

    def next(self) -> dict[str, object]:
        symbol = self.rng.choice(self.symbols)
        price = round(self.prices[symbol] * (1 + self.rng.uniform(-0.01, 0.01)), 2)
        return {"symbol": symbol, "price": price, "ts": round(time.time(), 3)}


def _encode(ticks: list[dict[str, object]]) -> bytes:
    """One frame: a one-tick frame is a plain object, a larger one an array (SPEC §5)."""
    return _frame(json.dumps(ticks[0] if len(ticks) == 1 else ticks))


def _stream(client: _Client, job: Stream) -> Done:
    source = _Ticks(job.prices, job.seed)
    pool_frames = max(1, POOL_TICKS // job.frame_ticks)
    frames = [_encode([source.next() for _ in range(job.frame_ticks)])
              for _ in range(pool_frames)]
    full, rest = divmod(job.ticks // job.frame_ticks, pool_frames)
    cycle = memoryview(b"".join(frames))
    tail = memoryview(b"".join(frames[:rest]))
    first = time.monotonic()
    for _ in range(full):
        _send_chunked(client, cycle)
    _send_chunked(client, tail)
    return Done(first, time.monotonic(), (full * pool_frames + rest) * job.frame_ticks)


def _send_chunked(client: _Client, data: memoryview) -> None:
    for start in range(0, len(data), CHUNK):
        client.send(data[start:start + CHUNK])


def _paced(client: _Client, job: Paced) -> Done:
    source = _Ticks(job.prices, job.seed)
    total = int(job.rate * job.duration)
    breaches = list(job.breaches)
    sent_breaches: list[tuple[str, float]] = []
    first = time.monotonic()
    next_breach = first + job.breach_every
    sent = 0
    while sent < total:
        now = time.monotonic()
        due = min(total, int((now - first) * job.rate)) - sent
        if due < job.frame_ticks:
            time.sleep(0.0002)
            continue
        due -= due % job.frame_ticks
        ticks = [source.next() for _ in range(due)]
        breach = None
        if breaches and now >= next_breach:
            symbol, price = breaches.pop(0)
            ticks[-1] = {"symbol": symbol, "price": price, "ts": round(time.time(), 3)}
            breach = symbol
            next_breach += job.breach_every
        data = b"".join(_encode(ticks[i:i + job.frame_ticks])
                        for i in range(0, due, job.frame_ticks))
        at = time.monotonic()
        client.send(data)
        if breach is not None:
            sent_breaches.append((breach, at))
        sent += due
    return Done(first, time.monotonic(), sent, tuple(sent_breaches))


def serve(control: Connection) -> None:
    """The server process's main: report the port, then run jobs until told to stop."""
    server = _Server()
    threading.Thread(target=server.accept_forever, daemon=True).start()
    control.send(server.port)
    while True:
        job = control.recv()
        if job is None:
            break
        control.send(server.run(job))
    server.listener.close()
