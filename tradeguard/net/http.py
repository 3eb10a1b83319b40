"""A small JSON-over-HTTP client that connects to an address from the resolver ladder.

The TCP connection goes to the resolved IP; TLS SNI, certificate verification
and the `Host` header all stay on the URL's hostname, so a fallback-resolved
address is checked exactly like a system-resolved one. Verification is never
turned off; `ca_file` only adds trust.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from tradeguard.net.pinned import tls_context
from tradeguard.net.resolver import Resolution, is_ip

__all__ = ["Response", "request_json", "tls_context"]

MAX_BODY = 1 << 20


class Resolves(Protocol):
    def resolve(self, host: str) -> Resolution: ...


@dataclass(frozen=True)
class Response:
    status: int
    body: Any  # parsed JSON, or None when the body was not JSON
    text: str
    headers: dict[str, str]
    resolution: Resolution | None


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(
        self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise


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
    """Send one request and read a JSON answer.

    Raises OSError (including ssl.SSLError and TimeoutError), http.client
    errors, or the resolver's ResolverError; callers translate those into
    their own subsystem's error.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    resolution: Resolution | None = None
    if is_ip(host):
        address = host
        resolution = Resolution(host, (host,), "literal")
    elif resolver is not None:
        resolution = resolver.resolve(host)
        address = resolution.address
    else:
        address = host
    conn: http.client.HTTPConnection
    if secure:
        conn = _PinnedHTTPSConnection(host, port, address, timeout, tls_context(ca_file))
    else:
        conn = _PinnedHTTPConnection(host, port, address, timeout)
    payload = None if body is None else json.dumps(body).encode()
    all_headers = {"Accept": "application/json", "User-Agent": "tradeguard"}
    if payload is not None:
        all_headers["Content-Type"] = "application/json"
    all_headers.update(headers or {})
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request(method, path, body=payload, headers=all_headers)
        resp = conn.getresponse()
        raw = resp.read(MAX_BODY)
        resp_headers = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    text = raw.decode("utf-8", errors="replace")
    try:
        parsed: Any = json.loads(text) if text else None
    except ValueError:
        parsed = None
    return Response(resp.status, parsed, text, resp_headers, resolution)
