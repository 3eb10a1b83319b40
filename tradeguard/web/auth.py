"""Who may ask: the Host allow-list, the bearer token, and a limit on wrong tokens.

The token (`Authorization: Bearer <api.token>`) is compared in constant time,
on bytes, and never echoed: the 401 says only that the token is missing or
wrong, and nothing here logs it.

Host (finding D2): on loopback, reads need no token, so a web page the
operator visits could rebind its own name to 127.0.0.1 and read positions
same-origin. Its requests carry its own name in `Host`; only loopback names
and addresses and the configured `api.host` are answered, anything else gets
a 421. A wildcard `api.host` (0.0.0.0, ::) accepts any name: reads then need
the token anyway.

Wrong tokens (finding D6): a client that presents more than `FAILURES_ALLOWED`
wrong or missing tokens within `FAILURE_WINDOW` seconds gets 429 until the
window ends, whatever it presents. Loopback clients are exempt: there the
lockout would let any local process block the operator's emergency close, and
the token's minimum length (config) already makes guessing hopeless.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import threading
import time
from collections.abc import Callable

from flask import request

from tradeguard.net.addresses import is_loopback
from tradeguard.web.errors import ApiError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CHALLENGE = {"WWW-Authenticate": "Bearer"}
FAILURES_ALLOWED = 10
FAILURE_WINDOW = 60.0
MAX_TRACKED_CLIENTS = 4096
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - recognised, not bound


def presented_token() -> str | None:
    """The token of an `Authorization: Bearer ...` header, or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def token_matches(presented: str | None, expected: str) -> bool:
    if presented is None or not expected:
        return False
    # Bytes, not str: compare_digest on str refuses non-ASCII, which a client controls.
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


def host_name(header: str) -> str:
    """The name of a Host header without its port, lower case, no trailing dot."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    if header.count(":") == 1:
        header = header.partition(":")[0]
    return header.rstrip(".")


def host_allowed(header: str | None, api_host: str) -> bool:
    """May a request with this Host header be answered (DNS-rebinding defence)?"""
    if header is None or api_host in WILDCARD_HOSTS:
        return True  # no Host: HTTP/1.0, not a browser
    name = host_name(header)
    if name == host_name(api_host) or is_loopback(name) or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name) == ipaddress.ip_address(api_host)
    except ValueError:
        return False


class FailureLimit:
    """Wrong-token attempts per client in a fixed window, with a clock tests can step."""

    def __init__(self, allowed: int = FAILURES_ALLOWED, window: float = FAILURE_WINDOW,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.allowed = allowed
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._clients: dict[str, tuple[float, int]] = {}  # client -> (window start, failures)

    def blocked_for(self, client: str) -> float:
        """Seconds until `client` may try again; 0 if it may now."""
        now = self._clock()
        with self._lock:
            start, failures = self._clients.get(client, (now, 0))
        left = start + self.window - now
        return left if failures >= self.allowed and left > 0 else 0.0

    def failed(self, client: str) -> None:
        now = self._clock()
        with self._lock:
            start, failures = self._clients.get(client, (now, 0))
            if now - start >= self.window:
                start, failures = now, 0
            self._clients[client] = (start, failures + 1)
            if len(self._clients) > MAX_TRACKED_CLIENTS:
                self._forget_before(now - self.window)

    def _forget_before(self, cutoff: float) -> None:
        """Drop windows that ended; past the cap, the oldest go too (a flood of addresses)."""
        by_age = sorted(self._clients, key=lambda c: self._clients[c][0])
        for client in [c for c in by_age if self._clients[c][0] < cutoff]:
            del self._clients[client]
        for client in by_age[:max(0, len(self._clients) - MAX_TRACKED_CLIENTS // 2)]:
            self._clients.pop(client, None)


class Gate:
    """The checks every request passes before a view runs."""

    def __init__(self, api_host: str, limit: FailureLimit | None = None) -> None:
        self.api_host = api_host
        self.limit = limit or FailureLimit()

    def check_host(self) -> None:
        if not host_allowed(request.headers.get("Host"), self.api_host):
            raise ApiError("this server answers only to its own host names "
                           "(loopback or api.host)", 421)

    def require_token(self, expected: str, *, protect_reads: bool) -> None:
        """Raise a 401 (or 429) ApiError unless this request may go on.

        Writes always need the token; reads only when the API is reachable from
        other machines (`protect_reads`).
        """
        if request.method in SAFE_METHODS and not protect_reads:
            return
        client = request.remote_addr or ""
        limited = not is_loopback(client)
        wait = self.limit.blocked_for(client) if limited else 0.0
        if wait:
            raise ApiError("too many wrong tokens from this address; retry later", 429,
                           {"Retry-After": str(math.ceil(wait))})
        if not token_matches(presented_token(), expected):
            if limited:
                self.limit.failed(client)
            raise ApiError("missing or invalid bearer token", 401, CHALLENGE)
