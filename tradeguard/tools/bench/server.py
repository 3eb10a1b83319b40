"""The benchmark's price feed: a WebSocket server in a process of its own.

A plain socket server that speaks just enough RFC 6455 (the upgrade, then
websocket-client's ABNF framing), so `tradeguard bench` needs nothing the
service does not install. It runs in a separate process so that producing
the stream never competes with the client under test for the GIL.

The bench sends it one job at a time, as a JSON line on its stdin. A job
waits until the client that connected on the job's URL path has subscribed
to every symbol the job sends, streams to it, and answers with a `Done` on
stdout. Times are `time.monotonic()`, one clock for every process on Linux,
so the bench compares them with its own.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import itertools
import json
import random
import select
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from websocket import ABNF
from websocket._abnf import frame_buffer

from tradeguard.errors import TradeGuardError

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CHUNK = 1 << 16  # about this many bytes per send, so that a pong can go out between them
POOL_TICKS = 20_000  # distinct ticks in a stream, which then repeats them
CLIENT_WAIT = 30.0  # seconds a job waits for its client to connect and subscribe


@dataclass(frozen=True)
class Stream:
    """`ticks` ticks as fast as the client takes them, `frame_ticks` to a frame.

    Every `breach_every` ticks the next of `breaches` (symbol, price) goes
    out as a one-tick frame of its own, on top of the `ticks`.
    """

    path: str
    prices: dict[str, float]
    ticks: int
    frame_ticks: int
    seed: int
    breaches: tuple[tuple[str, float], ...] = ()
    breach_every: int = 0


@dataclass(frozen=True)
class Paced:
    """`rate` ticks a second for `duration` seconds, `frame_ticks` to a frame.

    Every `breach_every` seconds the next of `breaches` takes the place of
    an ordinary tick, so the offered rate stays `rate`.
    """

    path: str
    prices: dict[str, float]
    rate: float
    duration: float
    frame_ticks: int
    seed: int
    breaches: tuple[tuple[str, float], ...] = ()
    breach_every: float = 0.1


@dataclass(frozen=True)
class Done:
    """A job's outcome: when its first and last bytes went out, and each breach's send time."""

    first_sent: float
    last_sent: float
    ticks: int
    breaches_sent: tuple[tuple[str, float], ...] = ()
    error: str = ""


class FeedServer:
    """The server process, seen from the bench: start, run jobs, stop.

    A child process (`python -m tradeguard.tools.bench.server`) that takes jobs as
    JSON lines on its stdin and answers on its stdout.
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None
        self.port = 0

    def __enter__(self) -> FeedServer:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tradeguard.tools.bench.server"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.port = int(self._answer(CLIENT_WAIT)["port"])
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        process = self._process
        if process is None:
            return
        assert process.stdin is not None
        with contextlib.suppress(OSError):
            process.stdin.close()  # end of input: the server stops
        try:
            process.wait(5.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def begin(self, job: Stream | Paced) -> None:
        assert self._process is not None and self._process.stdin is not None
        kind = "stream" if isinstance(job, Stream) else "paced"
        self._process.stdin.write(json.dumps({"kind": kind, **dataclasses.asdict(job)}) + "\n")

    def result(self, timeout: float) -> Done:
        answer = self._answer(timeout)
        done = Done(answer["first_sent"], answer["last_sent"], answer["ticks"],
                    tuple((s, at) for s, at in answer["breaches_sent"]), answer["error"])
        if done.error:
            raise TradeGuardError(f"bench feed server: {done.error}")
        return done

    def _answer(self, timeout: float) -> dict[str, Any]:
        assert self._process is not None and self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], timeout)
        line = self._process.stdout.readline() if ready else ""
        if not line:
            raise TradeGuardError(f"the bench feed server did not answer within {timeout:.0f}s")
        answer: dict[str, Any] = json.loads(line)
        return answer


# The server process ----------------------------------------------------------


def main() -> None:
    """The server process: report the port, then run jobs until stdin ends."""
    server = _Server()
    threading.Thread(target=server.accept_forever, daemon=True).start()
    _reply({"port": server.port})
    for line in sys.stdin:
        request = json.loads(line)
        kind = request.pop("kind")
        request["breaches"] = tuple(tuple(pair) for pair in request["breaches"])
        job = Stream(**request) if kind == "stream" else Paced(**request)
        _reply(dataclasses.asdict(server.run(job)))
    server.listener.close()


def _reply(answer: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


@dataclass(eq=False)
class _Client:
    sock: socket.socket
    path: str
    subscribed: set[str] = field(default_factory=set)
    send_lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, data: bytes | memoryview) -> None:
        with self.send_lock:
            self.sock.sendall(data)


class _Server:
    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.changed = threading.Condition()
        self.clients: list[_Client] = []

    def accept_forever(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return  # the listener is closed: the process is stopping
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client: _Client | None = None
        try:
            client = _Client(sock, _handshake(sock))
            with self.changed:
                self.clients.append(client)
            self._read(client)
        except (OSError, ValueError):
            pass  # a client going away mid-frame is none of the server's business
        finally:
            with self.changed:
                if client in self.clients:
                    self.clients.remove(client)
            sock.close()

    def _read(self, client: _Client) -> None:
        def recv(size: int) -> bytes:
            data = client.sock.recv(size)
            if not data:  # the client left without a close frame
                raise ConnectionResetError("closed by the client")
            return data

        frames = frame_buffer(recv, True)
        while True:
            frame = frames.recv_frame()
            if frame.opcode == ABNF.OPCODE_TEXT:
                self._subscribe(client, frame.data)
            elif frame.opcode == ABNF.OPCODE_PING:
                client.send(_frame(frame.data, ABNF.OPCODE_PONG))
            elif frame.opcode == ABNF.OPCODE_CLOSE:
                client.send(_frame(frame.data[:2], ABNF.OPCODE_CLOSE))
                return

    def _subscribe(self, client: _Client, data: str | bytes) -> None:
        try:
            request = json.loads(data)
            symbols = request["symbols"] if request["action"] == "subscribe" else []
        except (ValueError, KeyError, TypeError):
            return
        with self.changed:
            client.subscribed.update(str(s) for s in symbols)
            self.changed.notify_all()

    def run(self, job: Stream | Paced) -> Done:
        wanted = set(job.prices)

        def ready() -> _Client | None:
            return next((c for c in reversed(self.clients)
                         if c.path == job.path and wanted <= c.subscribed), None)

        with self.changed:
            self.changed.wait_for(ready, CLIENT_WAIT)
            client = ready()
        if client is None:
            return Done(0.0, 0.0, 0, error=f"no client subscribed on {job.path} in time")
        try:
            return _stream(client, job) if isinstance(job, Stream) else _paced(client, job)
        except OSError as exc:
            return Done(0.0, 0.0, 0, error=f"the client on {job.path} went away: {exc}")


def _handshake(sock: socket.socket) -> str:
    """Answer the WebSocket upgrade; the request's path."""
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = sock.recv(4096)
        if not chunk:
            raise ValueError("closed during the handshake")
        request += chunk
    lines = request.split(b"\r\n")
    key = next((line.split(b":", 1)[1].strip() for line in lines
                if line.lower().startswith(b"sec-websocket-key:")), None)
    if key is None:
        raise ValueError("not a WebSocket upgrade")
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())  # noqa: S324 - RFC 6455
    sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    return lines[0].split(b" ")[1].decode()


def _frame(data: bytes | str, opcode: int = ABNF.OPCODE_TEXT) -> bytes:
    frame = ABNF(1, 0, 0, 0, opcode, 0, data)  # unmasked: a server's frame
    return bytes(frame.format())


class _Ticks:
    """Ticks (SPEC §5) with prices wandering within 1% of each symbol's base price."""

    def __init__(self, prices: dict[str, float], seed: int) -> None:
        self.symbols = sorted(prices)
        self.prices = prices
        self.rng = random.Random(seed)  # noqa: S311 - a simulation, not cryptography

    def one(self) -> dict[str, object]:
        symbol = self.rng.choice(self.symbols)
        price = round(self.prices[symbol] * (1 + self.rng.uniform(-0.01, 0.01)), 2)
        return _tick(symbol, price)

    def frames(self, count: int, frame_ticks: int) -> list[bytes]:
        return [_encode([self.one() for _ in range(frame_ticks)]) for _ in range(count)]


def _tick(symbol: str, price: float) -> dict[str, object]:
    return {"symbol": symbol, "price": price, "ts": round(time.time(), 3)}


def _encode(ticks: list[dict[str, object]]) -> bytes:
    """One text frame: a single tick as an object, more as an array (SPEC §5)."""
    return _frame(json.dumps(ticks[0] if len(ticks) == 1 else ticks))


class _Cycle:
    """A pool of encoded frames, sent in order and over again from the start.

    Each send holds whole frames, so a pong sent between two of them never
    lands inside a frame.
    """

    def __init__(self, frames: list[bytes]) -> None:
        self.blob = memoryview(b"".join(frames))
        self.bounds = list(itertools.accumulate(map(len, frames), initial=0))
        self.per_send = max(1, CHUNK * len(frames) // len(self.blob))
        self.at = 0

    def send(self, client: _Client, frames: int) -> None:
        count = len(self.bounds) - 1
        while frames > 0:
            take = min(frames, count - self.at, self.per_send)
            client.send(self.blob[self.bounds[self.at]:self.bounds[self.at + take]])
            self.at = (self.at + take) % count
            frames -= take


def _stream(client: _Client, job: Stream) -> Done:
    pool = _Ticks(job.prices, job.seed).frames(max(1, POOL_TICKS // job.frame_ticks),
                                               job.frame_ticks)
    cycle = _Cycle(pool)
    breaches = list(job.breaches)
    left = job.ticks // job.frame_ticks
    step = max(1, job.breach_every // job.frame_ticks)
    sent: list[tuple[str, float]] = []
    first = time.monotonic()
    while left > 0:
        frames = min(left, step) if breaches else left
        cycle.send(client, frames)
        left -= frames
        if breaches:
            symbol, price = breaches.pop(0)
            at = time.monotonic()
            client.send(_encode([_tick(symbol, price)]))
            sent.append((symbol, at))
    ticks = job.ticks // job.frame_ticks * job.frame_ticks + len(sent)
    return Done(first, time.monotonic(), ticks, tuple(sent))


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
        due -= due % job.frame_ticks
        if due <= 0:
            time.sleep(0.0002)  # a fifth of a tick interval at 1,000 ticks/s and above
            continue
        ticks = [source.one() for _ in range(due)]
        breach = None
        if breaches and now >= next_breach:
            breach, price = breaches.pop(0)
            ticks[-1] = _tick(breach, price)
            next_breach += job.breach_every
        data = b"".join(_encode(ticks[i:i + job.frame_ticks])
                        for i in range(0, due, job.frame_ticks))
        at = time.monotonic()
        client.send(data)
        if breach is not None:
            sent_breaches.append((breach, at))
        sent += due
    return Done(first, time.monotonic(), sent, tuple(sent_breaches))


if __name__ == "__main__":
    main()
