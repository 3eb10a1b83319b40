"""The production WSGI server for the app: waitress, held to the API's error rules.

waitress answers some requests itself, before the app sees them: a malformed
request line or header (400), headers too large (431), a body over its limit
(413), a transfer encoding it does not implement (501), and an app that fails
after its response began (500). Its own answers are plain text; SPEC §6 says
every error is `{"status": "error", "error": ...}`, so `JsonErrorTask` writes
them in that shape.

waitress reads a whole request body (to a temporary file past 512 KiB) before
it calls the app. Left at its default limit of 1 GiB, anyone who can reach the
port could make it buffer a gigabyte before the app said 413. Its limit is set
just above the app's `MAX_BODY_BYTES` instead: chunk framing counts against
waitress's limit, hence the headroom. A body between the two limits gets the
app's 413, one above waitress's gets this module's, and both are JSON.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any, cast

from flask import Flask
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import BaseWSGIServer, create_server
from waitress.task import ErrorTask, ThreadedTaskDispatcher
from waitress.wasyncore import close_all

from tradeguard.web.app import CLOSE_SLOTS, MAX_BODY_BYTES

WIRE_BODY_LIMIT = 2 * MAX_BODY_BYTES
THREADS = CLOSE_SLOTS + 2  # two that no emergency close can take (finding C5)
BACKLOG = 1024  # connections that may wait while an ApiActor incarnation is replaced


class JsonErrorTask(ErrorTask):
    """waitress's own error answers, as the API's JSON error body."""

    def execute(self) -> None:
        # The stubs type `request` as an Error; it is the parser that failed.
        error = cast(HTTPRequestParser, self.request).error
        assert error is not None, "waitress makes an error task only for a failed request"
        body = json.dumps({"status": "error", "error": f"{error.reason}: {error.body}"})
        self.status = f"{error.code} {error.reason}"
        self.response_headers = [
            ("Content-Type", "application/json"),
            ("X-Content-Type-Options", "nosniff"),
            ("Cache-Control", "no-store"),
        ]
        self.set_close_on_finish()
        data = body.encode("utf-8")
        self.content_length = len(data)
        self.write(data)


class JsonErrorChannel(HTTPChannel):
    error_task_class = JsonErrorTask


@dataclass
class Listener:
    """The bound sockets of one server (two for a host such as localhost on IPv4 and IPv6)."""

    socket_map: dict[int, Any]  # waitress's asyncore map: listeners, then connections
    servers: list[BaseWSGIServer]
    dispatcher: ThreadedTaskDispatcher

    @property
    def port(self) -> int:
        return int(self.servers[0].effective_port)  # type: ignore[attr-defined]

    def stop_accepting(self) -> None:
        """Take no new connection (the next incarnation will); serve the open ones on."""
        for server in self.servers:
            server.close()

    def busy(self) -> bool:
        """True while a connection is open: a request may still be waiting for its answer."""
        return bool(self.socket_map)

    def close(self) -> None:
        """Stop the worker threads and close every socket; call from the serving thread."""
        self.dispatcher.shutdown()
        close_all(self.socket_map)


def bind(host: str, port: int) -> list[socket.socket]:
    """The listening sockets for `host:port` (port 0: any free one), as waitress would bind.

    Bound once per process and handed to every ApiActor incarnation (as
    duplicates): while one incarnation is replaced, connections wait in the
    kernel's queue instead of being refused, so an operator's close request
    made during a restart is answered by the next incarnation.
    """
    sockets: list[socket.socket] = []
    try:
        # (family, type, proto, address) per address of host; the stubs type it as strings.
        listen_on: list[tuple[int, int, int, tuple[Any, ...]]] = cast(
            Any, Adjustments(host=host, port=port).listen)
        for family, kind, proto, address in listen_on:
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], port, *address[2:]))
            sock.listen(BACKLOG)
            port = port or sock.getsockname()[1]  # the other family on the same port
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def listen(app: Flask, sockets: list[socket.socket], threads: int = THREADS) -> Listener:
    """Serve `app` on duplicates of the bound `sockets`; the originals stay open.

    Serve by running `waitress.wasyncore.loop(map=listener.socket_map)`.
    """
    socket_map: dict[int, Any] = {}
    # Our own dispatcher, given threads only once the sockets are set up:
    # waitress would start them first and leave them behind on a failure.
    dispatcher = ThreadedTaskDispatcher()
    duplicates = [sock.dup() for sock in sockets]
    try:
        create_server(app, map=socket_map, _dispatcher=dispatcher, sockets=duplicates,
                      ident="tradeguard", clear_untrusted_proxy_headers=True,
                      max_request_body_size=WIRE_BODY_LIMIT, backlog=BACKLOG)
    except OSError:
        close_all(socket_map)
        for sock in duplicates:
            sock.close()
        raise
    servers = [s for s in socket_map.values() if isinstance(s, BaseWSGIServer)]
    for server in servers:
        server.channel_class = JsonErrorChannel
    dispatcher.set_thread_count(threads)
    return Listener(socket_map, servers, dispatcher)
