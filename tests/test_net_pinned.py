"""open_pinned: TCP to a resolved IP, TLS on the hostname, every address tried in turn."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tradeguard.net.pinned import Pinned, open_pinned, tls_context

HOST = "broker.tradeguard.test"
LIVE = "127.0.0.1"
DEAD = "127.0.0.2"  # loopback too, but nothing listens there: refused at once


class TlsEcho:
    """A TLS server on 127.0.0.1 that sends back the SNI name each client asked for."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._sock = socket.create_server((LIVE, 0))
        self.port = int(self._sock.getsockname()[1])
        self._context = context
        self._names: list[str | None] = []
        context.sni_callback = lambda conn, name, ctx: self._names.append(name)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self._sock.accept()
            except OSError:
                return  # closed
            try:
                with self._context.wrap_socket(raw, server_side=True) as conn:
                    conn.sendall(f"{self._names[-1]}\n".encode())
            except OSError:
                raw.close()  # a client that refused our certificate

    def close(self) -> None:
        self._sock.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def client_tls(ca: trustme.CA, tmp_path: Path) -> ssl.SSLContext:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return tls_context(str(path))


@pytest.fixture
def echo(ca: trustme.CA) -> Iterator[TlsEcho]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(context)
    server = TlsEcho(context)
    yield server
    server.close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.create_server((LIVE, 0))
    yield sock
    sock.close()


def test_a9_a_dead_first_address_is_skipped_for_the_next(listener: socket.socket) -> None:
    """A9: the first A record is down; the connection goes to the second one."""
    port = listener.getsockname()[1]

    pinned = open_pinned(HOST, port, [DEAD, LIVE], timeout=2.0, tls=None)

    assert pinned.ip == LIVE
    assert pinned.sock.getpeername() == (LIVE, port)
    pinned.sock.close()


def test_every_address_dead_raises_the_last_error(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        open_pinned(HOST, port, [DEAD, "127.0.0.3"], timeout=2.0, tls=None)
    with pytest.raises(OSError, match="no address"):
        open_pinned(HOST, port, [], timeout=2.0, tls=None)


def test_tls_sni_and_certificate_are_on_the_hostname_not_the_ip(
    echo: TlsEcho, client_tls: ssl.SSLContext
) -> None:
    pinned = open_pinned(HOST, echo.port, [DEAD, LIVE], timeout=2.0, tls=client_tls)

    assert isinstance(pinned, Pinned) and pinned.ip == LIVE
    assert pinned.sock.recv(100) == f"{HOST}\n".encode()
    assert pinned.sock.gettimeout() == 2.0
    pinned.sock.close()


def test_a_certificate_for_another_name_is_refused(
    echo: TlsEcho, client_tls: ssl.SSLContext
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        open_pinned("other.tradeguard.test", echo.port, [LIVE], timeout=2.0, tls=client_tls)


def test_system_cas_alone_refuse_a_private_ca(echo: TlsEcho) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        open_pinned(HOST, echo.port, [LIVE], timeout=2.0, tls=tls_context())
