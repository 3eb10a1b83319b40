"""Every HTTP error as JSON: `{"status": "error", "error": "<message>"}`.

Three kinds reach the client. `ApiError` and `PositionError` carry their
status code and a message meant for the operator. Werkzeug's own errors (404,
405, 413, ...) keep their code and headers (such as `Allow`). Anything else
is a bug: the client gets a generic 500 and the traceback goes to the log,
never to the response.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from tradeguard.errors import PositionError, TradeGuardError
from tradeguard.logs import printable

INTERNAL_ERROR = "internal error; the details are in the TradeGuard log"
CLIENT_ERRORS_PER_MINUTE = 20


class ApiError(TradeGuardError):
    """A request the HTTP layer refuses; `code` is the status, `headers` go with it."""

    def __init__(self, message: str, code: int = 400, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.code = code
        self.headers = dict(headers or {})


def error_response(message: str, code: int, headers: Mapping[str, str] | None = None) -> Response:
    response = jsonify(status="error", error=message)
    response.status_code = code
    response.headers.update(headers or {})
    return response


class LogBudget:
    """At most `per_minute` log lines a minute; the next line says how many were held back.

    Bad requests are logged so an operator can see a misconfigured client, but
    a flood of them must not flood the log.
    """

    def __init__(
        self, per_minute: int = CLIENT_ERRORS_PER_MINUTE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._per_minute = per_minute
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start = clock()
        self._used = 0
        self._held = 0

    def take(self) -> int | None:
        """None: do not log. Otherwise log, mentioning the returned count held back."""
        with self._lock:
            now = self._clock()
            if now - self._window_start >= 60.0:
                self._window_start, self._used = now, 0
            if self._used >= self._per_minute:
                self._held += 1
                return None
            self._used += 1
            held, self._held = self._held, 0
            return held


def register(app: Flask, logger: logging.Logger) -> None:
    """Install the handlers that turn every error of `app` into a JSON body."""
    budget = LogBudget()

    def client_error(message: str, code: int, headers: Mapping[str, str]) -> Response:
        held = budget.take()
        if held is not None:
            # request.path only: a query string is the client's and may hold anything.
            # The path is percent-decoded and the message may quote the client:
            # escaped, so neither can start a forged log line (finding D1).
            logger.info("[API] %d %s %s from %s: %s%s", code, printable(request.method),
                        printable(request.path), request.remote_addr, printable(message),
                        f" ({held} similar lines held back)" if held else "")
        return error_response(message, code, headers)

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> Response:
        return client_error(str(exc), exc.code, exc.headers)

    @app.errorhandler(PositionError)
    def position_error(exc: PositionError) -> Response:
        return client_error(str(exc), exc.code, {})

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        return client_error(exc.description or exc.name, code, headers)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        logger.exception("[API] %s %s failed", printable(request.method),
                         printable(request.path))
        return error_response(INTERNAL_ERROR, 500)
