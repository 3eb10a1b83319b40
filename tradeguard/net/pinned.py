"""A TCP connection to a resolved IP, with TLS and the name checks on the hostname.

The resolver ladder hands back addresses; the connection goes to one of them
while TLS SNI and certificate verification stay on the hostname the caller
asked for (the HTTP `Host` header is the caller's, on the same hostname), so a
fallback-resolved or stale address is checked exactly like a system-resolved
one. Every address of the answer is tried in turn: one dead A record must not
keep a feed or a broker down while a healthy one exists (finding A9).
Verification is never turned off; `tls` is a context made by `tls_context`.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

_SOCKET_OPTIONS = (
    (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),  # an order is one small write: send it now
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),  # a kept-alive connection notices a dead peer
)


@dataclass(frozen=True)
class Pinned:
    """An open (TLS-wrapped when asked) socket and the address it reached."""

    sock: socket.socket
    ip: str


def tls_context(ca_file: str = "") -> ssl.SSLContext:
    """System CAs plus an optional extra bundle; hostname checks always on."""
    ctx = ssl.create_default_context()
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    return ctx


def open_pinned(
    host: str,
    port: int,
    addresses: Sequence[str],
    *,
    timeout: float,
    tls: ssl.SSLContext | None,
) -> Pinned:
    """Connect to the first of `addresses` that answers; raise the last OSError if none does.

    `timeout` bounds each address's TCP connect and TLS handshake, and stays
    set on the returned socket. A TLS failure (a certificate that does not
    match `host` included) moves on to the next address too: each address is
    a different server, and none is trusted without its own proof.
    """
    last: OSError = OSError(f"no address to connect to for {host}")
    for ip in addresses:
        try:
            return Pinned(_connect(host, ip, port, timeout, tls), ip)
        except OSError as exc:
            logger.info("Cannot connect to %s at %s:%d: %s", host, ip, port, exc)
            last = exc
    raise last


def _connect(
    host: str, ip: str, port: int, timeout: float, tls: ssl.SSLContext | None
) -> socket.socket:
    deadline = time.monotonic() + timeout
    sock = socket.create_connection((ip, port), timeout=timeout)
    try:
        for option in _SOCKET_OPTIONS:
            sock.setsockopt(*option)
        if tls is None:
            return sock
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        wrapped = tls.wrap_socket(sock, server_hostname=host)
        wrapped.settimeout(timeout)
        return wrapped
    except BaseException:
        sock.close()
        raise
