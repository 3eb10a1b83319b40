"""JSON over HTTP(S) on kept-alive connections to addresses from the resolver ladder.

A close order must not wait for DNS nor for a TLS handshake when the broker
is up (SPEC §4, finding A8): `HttpClient` keeps its connections alive and
reuses them per (scheme, host, port), and asks the resolver (whose answers
are cached for their TTL) only when it opens a new one. Each connection is
opened by `open_pinned`: TCP to a resolved IP, trying every address of the
answer (A9), with TLS SNI, certificate verification and the `Host` header on
the URL's hostname. Verification is never turned off; `ca_file` only adds trust.
"""

from __future__ import annotations

import http.client
import json
import logging
import select
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable
from urllib.parse import SplitResult, urlsplit

from tradeguard.net.pinned import open_pinned, tls_context
from tradeguard.net.resolver import Resolution, is_ip

__all__ = ["HttpClient", "Remembers", "Resolves", "Response", "request_json", "tls_context"]

logger = logging.getLogger(__name__)

MAX_BODY = 1 << 20
MAX_IDLE = 4  # kept-alive connections per (scheme, host, port): one per concurrent close
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})  # RFC 9110 §9.2.2
# What a kept-alive connection the server already dropped looks like on the next request.
_DEAD_CONNECTION = (ConnectionError, http.client.RemoteDisconnected, ssl.SSLEOFError,
                    http.client.NotConnected)

Key = tuple[str, str, int]


class _Dropped(Exception):
    """A reused connection turned out dead before any answer came back."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class Resolves(Protocol):
    def resolve(self, host: str) -> Resolution: ...


@runtime_checkable
class Remembers(Protocol):
    """A resolver that wants to hear which address worked (tradeguard.net.resolver.Resolver)."""

    def confirm(self, host: str, ip: str) -> None: ...

    def forget(self, host: str) -> None: ...


@dataclass(frozen=True)
class Response:
    status: int
    body: Any  # parsed JSON, or None when the body was not JSON
    text: str
    headers: dict[str, str]
    resolution: Resolution | None
    raw: bytes = b""  # the body as it came (a CSV, a gzip file)


class _Connection(http.client.HTTPConnection):
    """http.client's connection, with its socket opened by `open_pinned`."""

    def __init__(self, key: Key, resolution: Resolution, timeout: float,
                 tls: ssl.SSLContext | None) -> None:
        super().__init__(key[1], key[2], timeout=timeout)
        self.default_port = 443 if tls is not None else 80  # `Host` carries the port only if odd
        self.resolution = resolution
        self.ip = ""
        self.reused = False
        self._tls = tls

    def connect(self) -> None:
        assert self.timeout is not None
        pinned = open_pinned(self.host, self.port, self.resolution.addresses,
                             timeout=self.timeout, tls=self._tls)
        self.sock, self.ip = pinned.sock, pinned.ip
        self.auto_open = 0  # a dropped connection is never silently reopened to the same IP

    def idle_and_open(self) -> bool:
        """True if the peer has neither closed it nor sent anything while it was idle."""
        if self.sock is None:
            return False
        readable, _, _ = select.select([self.sock], [], [], 0)
        return not readable


class HttpClient:
    """Sends JSON requests on kept-alive connections; safe to use from many threads.

    A connection serves one request at a time: it is taken out of the pool
    for the request and put back once its answer was read whole.

    Retry rule: when a request fails on a *reused* connection before any
    answer arrived, because the server had dropped it (reset, closed, broken
    pipe), it is sent once more on a fresh connection, if it is safe to
    repeat: a GET, HEAD, OPTIONS, PUT or DELETE, or any request the caller
    marks `idempotent=True`. A broker's POST /orders is one: SPEC §7 makes a
    `client_order_id` sent twice mean one order. A Telegram message is not
    (it would be delivered twice). Nothing else is retried here: a timeout, or
    a failure on a fresh connection, goes to the caller, whose retry looks the
    order up before it sends again.
    """

    def __init__(self, resolver: Resolves | None, *, timeout: float, ca_file: str = "") -> None:
        self._resolver = resolver
        self._timeout = timeout
        # A bad CA file fails here, at start; the system CAs take ~30 ms to load, so
        # without one they are loaded at the first https connection only.
        self._tls = tls_context(ca_file) if ca_file else None
        self._lock = threading.Lock()
        self._idle: dict[Key, list[_Connection]] = {}
        self.connections_opened = 0  # how many TCP connections were made (for tests and logs)

    def close(self) -> None:
        """Close every idle connection; one in use is closed when its request ends."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def request_json(self, method: str, url: str, *, body: Any = None,
                     headers: dict[str, str] | None = None,
                     idempotent: bool | None = None, max_body: int = MAX_BODY) -> Response:
        """Send one request and read a JSON answer.

        `idempotent` overrides what the method says (see the retry rule above).
        A `bytes` body goes out as it is (a form: the caller sets Content-Type);
        `max_body` bounds the answer read (a longer one is cut and its connection closed).
        Raises OSError (including ssl.SSLError and TimeoutError), http.client
        errors, or the resolver's ResolverError; callers translate those into
        their own subsystem's error.
        """
        parts = urlsplit(url)
        key = _key(parts)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        payload = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        repeatable = method.upper() in IDEMPOTENT_METHODS if idempotent is None else idempotent
        try:
            return self._send(key, method, path, payload, headers, max_body=max_body)
        except _Dropped as dropped:
            if not repeatable:
                raise dropped.error from None
            logger.info("Kept-alive connection to %s was dropped (%s); sending %s %s again",
                        key[1], dropped.error or type(dropped.error).__name__, method, path)
            return self._send(key, method, path, payload, headers, fresh=True,
                              max_body=max_body)

    def _send(self, key: Key, method: str, path: str, payload: bytes | None,
              headers: dict[str, str] | None, *, fresh: bool = False,
              max_body: int = MAX_BODY) -> Response:
        with self._connection(key, fresh) as conn:
            try:
                conn.request(method, path, body=payload, headers=_headers(payload, headers))
                resp = conn.getresponse()
            except _DEAD_CONNECTION as exc:
                if conn.reused:
                    raise _Dropped(exc) from exc
                raise
            raw = resp.read(max_body)
            if resp.will_close or not resp.isclosed():  # closed, or a body past MAX_BODY
                conn.close()
        return _response(resp, raw, conn.resolution)

    @contextmanager
    def _connection(self, key: Key, fresh: bool) -> Iterator[_Connection]:
        conn = None if fresh else self._take_idle(key)
        if conn is None:
            conn = self._open(key)
        try:
            yield conn
        except BaseException:
            conn.close()
            raise
        if conn.sock is not None:
            self._put_idle(key, conn)

    def _take_idle(self, key: Key) -> _Connection | None:
        while True:
            with self._lock:
                conns = self._idle.get(key)
                if not conns:
                    return None
                conn = conns.pop()
            if conn.idle_and_open():
                conn.reused = True
                return conn
            conn.close()  # the server closed it while it sat in the pool

    def _put_idle(self, key: Key, conn: _Connection) -> None:
        with self._lock:
            conns = self._idle.setdefault(key, [])
            if len(conns) < MAX_IDLE:
                conns.append(conn)
                return
        conn.close()

    def _open(self, key: Key) -> _Connection:
        resolution = self._resolve(key[1])
        tls = self._tls_context() if key[0] == "https" else None
        conn = _Connection(key, resolution, self._timeout, tls)
        try:
            conn.connect()
        except OSError:
            if isinstance(self._resolver, Remembers) and resolution.via != "literal":
                self._resolver.forget(key[1])  # no address answered: ask again next time
            raise
        with self._lock:
            self.connections_opened += 1
        if isinstance(self._resolver, Remembers):
            self._resolver.confirm(key[1], conn.ip)
        return conn

    def _tls_context(self) -> ssl.SSLContext:
        with self._lock:
            if self._tls is None:
                self._tls = tls_context()
            return self._tls

    def _resolve(self, host: str) -> Resolution:
        if is_ip(host) or self._resolver is None:
            return Resolution(host, (host,), "literal" if is_ip(host) else "unresolved")
        return self._resolver.resolve(host)


def _key(parts: SplitResult) -> Key:
    secure = parts.scheme == "https"
    return parts.scheme, parts.hostname or "", parts.port or (443 if secure else 80)


def _headers(payload: bytes | None, extra: dict[str, str] | None) -> dict[str, str]:
    headers = {"Accept": "application/json", "User-Agent": "tradeguard"}
    if payload is not None:
        headers["Content-Type"] = "application/json"
    headers.update(extra or {})
    return headers


def _response(resp: http.client.HTTPResponse, raw: bytes, resolution: Resolution) -> Response:
    text = raw.decode("utf-8", errors="replace")
    try:
        parsed: Any = json.loads(text) if text else None
    except ValueError:
        parsed = None
    headers = {k.lower(): v for k, v in resp.getheaders()}
    shown = None if resolution.via == "unresolved" else resolution
    return Response(resp.status, parsed, text, headers, shown, raw)


def request_json(
    method: str,
    url: str,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
    resolver: Resolves | None = None,
    ca_file: str = "",
) -> Response:
    """One request on a connection of its own; for callers not yet holding an `HttpClient`."""
    client = HttpClient(resolver, timeout=timeout, ca_file=ca_file)
    try:
        return client.request_json(method, url, body=body, headers=headers)
    finally:
        client.close()
