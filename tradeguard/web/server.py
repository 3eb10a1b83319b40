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
from dataclasses import dataclass
from typing import Any, cast

from flask import Flask
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import BaseWSGIServer, create_server
from waitress.task import ErrorTask, ThreadedTaskDispatcher
from waitress.wasyncore import close_all

from tradeguard.web.app import CLOSE_SLOTS, MAX_BODY_BYTES

WIRE_BODY_LIMIT = 2 * MAX_BODY_BYTES
THREADS = CLOSE_SLOTS + 2  # two that no emergency close can take (finding C5)


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

    def close(self) -> None:
        """Stop the worker threads and close every socket; call from the serving thread."""
        self.dispatcher.shutdown()
        close_all(self.socket_map)


def listen(app: Flask, host: str, port: int, threads: int = THREADS) -> Listener:
    """Bind `host:port` (port 0: any free one) for `app`; OSError if it cannot.

    Serve by running `waitress.wasyncore.loop(map=listener.socket_map)`.
    """
    socket_map: dict[int, Any] = {}
    # Our own dispatcher, given threads only once the bind worked: waitress
    # would start them first and leave them behind when the bind fails.
    dispatcher = ThreadedTaskDispatcher()
    try:
        create_server(app, map=socket_map, _dispatcher=dispatcher, host=host, port=port,
                      ident="tradeguard", clear_untrusted_proxy_headers=True,
                      max_request_body_size=WIRE_BODY_LIMIT)
    except OSError:
        close_all(socket_map)  # a listener already bound when a second one failed
        raise
    servers = [s for s in socket_map.values() if isinstance(s, BaseWSGIServer)]
    for server in servers:
        server.channel_class = JsonErrorChannel
    dispatcher.set_thread_count(threads)
    return Listener(socket_map, servers, dispatcher)
