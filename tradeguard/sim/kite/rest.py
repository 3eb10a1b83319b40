"""Kite Connect's REST API on loopback (SPEC §10, brokers.md §2), over the stand-in's book.

Checks what Kite checks: `X-Kite-Version: 3`, `Authorization: token
api_key:access_token` (403 TokenException otherwise), form-encoded bodies.
Answers in Kite's envelope, `{"status": "success", "data": ...}` or
`{"status": "error", "message", "error_type"}`; a 502 is the gateway's HTML page.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tradeguard.sim.kite.book import KiteBook
from tradeguard.sim.kite.errors import KiteRefusal
from tradeguard.sim.kite.instruments import instruments_csv

logger = logging.getLogger(__name__)

MAX_BODY = 1 << 20
BAD_GATEWAY = (b"<html><head><title>502 Bad Gateway</title></head><body>"
               b"<center><h1>502 Bad Gateway</h1></center></body></html>\n")
Route = Callable[["_Handler", "re.Match[str]", dict[str, list[str]]], Any]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Kite's API servers
    timeout = 5.0
    disable_nagle_algorithm = True
    server: KiteRestServer

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        self.server.seen.append((self.command, url.path, dict(self.headers.items())))
        status = self.server.book.take_status(url.path)
        if status is not None:
            self._fault(status)
            return
        try:
            self._check_headers()
            data = self._route(url.path, parse_qs(url.query), parse_qs(body.decode()))
        except KiteRefusal as refusal:
            self._json(refusal.status, {"status": "error", "message": refusal.message,
                                        "data": None, "error_type": refusal.error_type})
            return
        if data is not _SENT:
            self._json(200, {"status": "success", "data": data})

    def _check_headers(self) -> None:
        if self.headers.get("X-Kite-Version") != "3":
            raise KiteRefusal(400, "InputException", "Invalid or missing `X-Kite-Version` header")
        kind, _, credentials = self.headers.get("Authorization", "").partition(" ")
        api_key, _, access_token = credentials.partition(":")
        if kind != "token" or not self.server.book.check_auth(api_key, access_token):
            raise KiteRefusal(403, "TokenException", "Incorrect `api_key` or `access_token`.")

    def _route(self, path: str, query: dict[str, list[str]], form: dict[str, list[str]]) -> Any:
        for method, pattern, handler in ROUTES:
            match = pattern.fullmatch(path)
            if match and method == self.command:
                return handler(self, match, query if method in ("GET", "DELETE") else form)
        raise KiteRefusal(404, "GeneralException", "Route not found")

    def _json(self, status: int, payload: Any) -> None:
        self._send(status, "application/json", json.dumps(payload).encode())

    def _send(self, status: int, content_type: str, data: bytes,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _fault(self, status: int) -> None:
        if status == 502:
            self._send(502, "text/html", BAD_GATEWAY)
            return
        kinds = {429: ("NetworkException", "Too many requests"),
                 503: ("NetworkException", "Service unavailable")}
        error_type, message = kinds.get(status, ("GeneralException", "Something went wrong"))
        self._json(status, {"status": "error", "message": message, "data": None,
                            "error_type": error_type})

    def drop(self) -> None:
        """Cut the connection without an answer (the order stays placed)."""
        self.close_connection = True
        self.connection.close()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("Kite stand-in: " + format, *args)


_SENT = object()  # the handler has written its own answer


def _form(form: dict[str, list[str]]) -> dict[str, str]:
    return {key: values[-1] for key, values in form.items()}


def _place(h: _Handler, m: re.Match[str], form: dict[str, list[str]]) -> Any:
    order_id = h.server.book.place(m["variety"], _form(form))
    if h.server.book.take_drop():
        h.drop()
        return _SENT
    return {"order_id": order_id}


def _orders(h: _Handler, m: re.Match[str], q: dict[str, list[str]]) -> Any:
    return h.server.book.order_book()


def _history(h: _Handler, m: re.Match[str], q: dict[str, list[str]]) -> Any:
    return h.server.book.history(m["order_id"])


def _positions(h: _Handler, m: re.Match[str], q: dict[str, list[str]]) -> Any:
    rows = h.server.book.position_rows()
    return {"net": rows, "day": [dict(r) for r in rows]}


def _ltp(h: _Handler, m: re.Match[str], q: dict[str, list[str]]) -> Any:
    book, answer = h.server.book, {}
    with book.lock:
        for symbol in q.get("i", []):
            if symbol in book.quotes:  # a symbol without data is left out, as Kite does
                answer[symbol] = {"instrument_token": book.instruments[symbol].token,
                                  "last_price": book.quotes[symbol].last_price}
    return answer


def _instruments(h: _Handler, m: re.Match[str], q: dict[str, list[str]]) -> Any:
    book = h.server.book
    with book.lock:
        prices = {s: quote.last_price for s, quote in book.quotes.items()}
        rows = [i for i in book.instruments.values()
                if not m["exchange"] or i.exchange == m["exchange"]]
    data = instruments_csv(rows, prices)
    if m["gz"]:  # the master as a .csv.gz file
        h._send(200, "application/gzip", gzip.compress(data))
    elif h.server.gzip and "gzip" in h.headers.get("Accept-Encoding", ""):
        h._send(200, "text/csv", gzip.compress(data), {"Content-Encoding": "gzip"})
    else:
        h._send(200, "text/csv", data)
    return _SENT


def _gtt_form(form: dict[str, list[str]]) -> dict[str, Any]:
    flat = _form(form)
    try:
        return {"type": flat.get("type", ""), "condition": json.loads(flat["condition"]),
                "orders": json.loads(flat["orders"])}
    except (KeyError, ValueError) as err:
        raise KiteRefusal(400, "InputException", f"Invalid GTT form: {err}") from None


def _gtt_place(h: _Handler, m: re.Match[str], form: dict[str, list[str]]) -> Any:
    return {"trigger_id": h.server.book.gtts.place(_gtt_form(form))}


def _gtt_modify(h: _Handler, m: re.Match[str], form: dict[str, list[str]]) -> Any:
    return {"trigger_id": h.server.book.gtts.modify(int(m["id"]), _gtt_form(form))}


def _gtt_delete(h: _Handler, m: re.Match[str], q: dict[str, list[str]]) -> Any:
    return {"trigger_id": h.server.book.gtts.delete(int(m["id"]))}


def _gtt_get(h: _Handler, m: re.Match[str], q: dict[str, list[str]]) -> Any:
    return json.loads(json.dumps(h.server.book.gtts.get(int(m["id"]))))


def _gtt_list(h: _Handler, m: re.Match[str], q: dict[str, list[str]]) -> Any:
    return json.loads(json.dumps(h.server.book.gtts.all()))


ROUTES: list[tuple[str, re.Pattern[str], Route]] = [
    ("POST", re.compile(r"/orders/(?P<variety>[a-z]+)"), _place),
    ("GET", re.compile(r"/orders"), _orders),
    ("GET", re.compile(r"/orders/(?P<order_id>\d+)"), _history),
    ("GET", re.compile(r"/portfolio/positions"), _positions),
    ("GET", re.compile(r"/quote/ltp"), _ltp),
    ("GET", re.compile(r"/instruments(?:/(?P<exchange>[A-Z]+))?(?P<gz>\.csv\.gz)?"), _instruments),
    ("POST", re.compile(r"/gtt/triggers"), _gtt_place),
    ("GET", re.compile(r"/gtt/triggers"), _gtt_list),
    ("GET", re.compile(r"/gtt/triggers/(?P<id>\d+)"), _gtt_get),
    ("PUT", re.compile(r"/gtt/triggers/(?P<id>\d+)"), _gtt_modify),
    ("DELETE", re.compile(r"/gtt/triggers/(?P<id>\d+)"), _gtt_delete),
]


class KiteRestServer(ThreadingHTTPServer):
    """The REST half of the stand-in; `seen` records (method, path, headers) of each request."""

    daemon_threads = True

    def __init__(self, book: KiteBook, port: int = 0, tls: ssl.SSLContext | None = None,
                 gzip_instruments: bool = True) -> None:
        self.book = book
        self.tls = tls
        self.gzip = gzip_instruments
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self._thread: threading.Thread | None = None
        super().__init__(("127.0.0.1", port), _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name=f"kite-rest-{self.port}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        # The TLS handshake runs in the request's own thread: a client that never
        # completes it cannot stall the accept loop.
        request.settimeout(_Handler.timeout)
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except OSError:
            logger.debug("Kite stand-in: TLS handshake with %s failed", client_address)
            return
        with conn:
            super().finish_request(conn, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("Kite stand-in: connection from %s failed", client_address, exc_info=True)
