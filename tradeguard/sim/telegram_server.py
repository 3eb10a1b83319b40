"""A Telegram Bot API stand-in on loopback: sendMessage only, with faults on demand.

Tests and the demo point `telegram.api_base` at it. It answers like Telegram
does (the same JSON shapes, 401 for a wrong token, 400 "chat not found" for
another chat than the one it knows, 429 with `parameters.retry_after`), keeps
connections alive (HTTP/1.1) like api.telegram.org, records what was delivered
and how many connections it took, and can be told at run time to fail,
throttle or hang. A hung request waits on an event, not a
sleep, so `stop()` releases it at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from tradeguard.sim.service import SimService

logger = logging.getLogger(__name__)

_Answer = tuple[int, dict[str, Any]]
_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


def _error(status: int, description: str = "") -> _Answer:
    text = description or _REASONS.get(status, "Error")
    return status, {"ok": False, "error_code": status, "description": text}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, as Telegram's own servers
    timeout = 5  # an idle kept-alive client must not hold up stop() for long

    def setup(self) -> None:
        super().setup()
        self.server.owner.connected(self.request)

    def finish(self) -> None:
        self.server.owner.disconnected(self.request)
        super().finish()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        answer = self.server.owner.handle(unquote(self.path), raw)
        if answer is None:  # stopped while holding the request: hang up, like a dead peer
            self.close_connection = True
            return
        status, body = answer
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the request line carries the bot token."""


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # so that server_close() joins every handler thread

    def __init__(self, address: tuple[str, int], owner: TelegramServer) -> None:
        super().__init__(address, _Handler)
        self.owner = owner

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and left is normal here, not worth a traceback.
        logger.debug("Telegram stand-in: request from %s failed", client_address, exc_info=True)


class TelegramServer(SimService):
    """POST /bot<token>/sendMessage on 127.0.0.1, an ephemeral port.

    `messages` holds the delivered (chat_id, text) pairs in order. Fault
    setters are safe from any thread while it runs; queued faults answer the
    next requests in the order they were queued.
    """

    def __init__(
        self, token: str, host: str = "127.0.0.1", port: int = 0, chat_id: str | None = None
    ) -> None:
        self.token = token
        self.chat_id = chat_id  # None: any chat exists
        self._bind = (host, port)
        self._cond = threading.Condition()
        self._messages: list[tuple[str, str]] = []
        self._requests = 0
        self._connections = 0
        self._open: set[socket.socket] = set()
        self._faults: deque[_Answer] = deque()
        self._hang_until = 0.0
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # Lifecycle -----------------------------------------------------------

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("TelegramServer is not started")
        return int(self._httpd.server_address[1])

    @property
    def api_base(self) -> str:
        return f"http://{self._bind[0]}:{self.port}"

    def start(self) -> TelegramServer:
        if self._httpd is not None:
            raise RuntimeError("a TelegramServer can be started once")
        self._httpd = _Server(self._bind, self)
        # serve_forever checks for shutdown() between polls: a short poll keeps stop() quick
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"telegram-{self.port}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._stopping.is_set() or self._httpd is None:
            return
        self._stopping.set()  # releases hung requests first, so the joins below end
        self._httpd.shutdown()
        with self._cond:
            idle = list(self._open)
        for sock in idle:  # kept-alive clients: their handlers wait for a next request
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    # What it saw -----------------------------------------------------------

    @property
    def messages(self) -> list[tuple[str, str]]:
        with self._cond:
            return list(self._messages)

    @property
    def requests(self) -> int:
        """sendMessage requests with the right token, faults included."""
        with self._cond:
            return self._requests

    @property
    def connections(self) -> int:
        """TCP connections accepted so far: how well the client keeps them alive."""
        with self._cond:
            return self._connections

    def connected(self, sock: socket.socket) -> None:
        with self._cond:
            self._connections += 1
            self._open.add(sock)

    def disconnected(self, sock: socket.socket) -> None:
        with self._cond:
            self._open.discard(sock)

    def wait_for(self, count: int, timeout: float) -> bool:
        """Block until at least `count` messages were delivered; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._messages) >= count, timeout)

    # Faults ------------------------------------------------------------------

    def fail_next(self, n: int, status: int = 500, description: str = "") -> None:
        with self._cond:
            self._faults.extend([_error(status, description)] * n)

    def rate_limit_next(self, n: int, retry_after: object) -> None:
        """429s naming `retry_after` as given: any JSON value, sane or not."""
        answer = _error(429, f"Too Many Requests: retry after {retry_after}")
        answer[1]["parameters"] = {"retry_after": retry_after}
        with self._cond:
            self._faults.extend([answer] * n)

    def hang(self, seconds: float) -> None:
        """Hold every request arriving in the next `seconds` until they are over."""
        with self._cond:
            self._hang_until = time.monotonic() + seconds

    # Serving (handler threads) -------------------------------------------------

    def handle(self, path: str, raw: bytes) -> _Answer | None:
        """The answer to one request, or None when stopped while holding it."""
        if not (path.startswith("/bot") and path.endswith("/sendMessage")):
            return _error(404)
        if path != f"/bot{self.token}/sendMessage":
            return _error(401)
        with self._cond:
            self._requests += 1
            hold = self._hang_until - time.monotonic()
        if hold > 0 and self._stopping.wait(hold):
            return None
        with self._cond:
            if self._faults:
                return self._faults.popleft()
        return self._deliver(raw)

    def _deliver(self, raw: bytes) -> _Answer:
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "Bad Request: can't parse JSON body")
        chat_id = body.get("chat_id") if isinstance(body, dict) else None
        text = body.get("text") if isinstance(body, dict) else None
        if chat_id in (None, ""):
            return _error(400, "Bad Request: chat_id is empty")
        if self.chat_id is not None and str(chat_id) != self.chat_id:
            return _error(400, "Bad Request: chat not found")
        if not isinstance(text, str) or not text:
            return _error(400, "Bad Request: message text is empty")
        with self._cond:
            self._messages.append((str(chat_id), text))
            message_id = len(self._messages)
            self._cond.notify_all()
        result = {"message_id": message_id, "date": int(time.time()),
                  "chat": {"id": chat_id}, "text": text}
        return 200, {"ok": True, "result": result}
