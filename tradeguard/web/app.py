"""The Flask application factory: `create_app(api)` builds the whole HTTP layer.

There is no module-level app. The system builds one around its
`tradeguard.guard.Guard` and hands it to a WSGI server (waitress); the web
tests build the same Guard on a temporary store, as Flask's tutorial does.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from flask import Flask, Response
from flask.json.provider import DefaultJSONProvider

from tradeguard.web import errors
from tradeguard.web.api import api_blueprint, load_openapi
from tradeguard.web.auth import Gate
from tradeguard.web.pages import pages_blueprint
from tradeguard.web.ports import GuardApi

MAX_BODY_BYTES = 64 * 1024  # the largest request body is a few hundred bytes
# Emergency closes that may run at once. waitress gets two threads more
# (web.server.THREADS), which nothing slow can take: /healthz, /metrics and
# the status page answer while every close slot waits on a broker.
CLOSE_SLOTS = 4


def create_app(
    api: GuardApi, *, logger_name: str = "tradeguard.web", gate: Gate | None = None,
    close_slots: int = CLOSE_SLOTS,
) -> Flask:
    """The app serving SPEC §6 for `api`; errors are logged to `logger_name`."""
    if not api.api_token:
        # An empty expected token would let an empty presented one through.
        raise ValueError("create_app needs a non-empty api_token")
    gate = gate or Gate(api.api_host)
    app = Flask(__name__)
    app.json = FiniteJSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    errors.register(app, logging.getLogger(logger_name))
    app.before_request(gate.check_host)
    app.register_blueprint(api_blueprint(api, load_openapi(), gate, close_slots))
    app.register_blueprint(pages_blueprint(api))
    app.after_request(_common_headers)
    return app


class FiniteJSONProvider(DefaultJSONProvider):
    """Sends a non-finite number (a P&L that overflowed) as null.

    Python's json writes NaN and Infinity, which are not JSON: a client's
    parser would reject the whole answer, and the status page would go blank
    over one bad figure.
    """

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return super().dumps(finite(obj), allow_nan=False, **kwargs)


def finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def _common_headers(response: Response) -> Response:
    response.headers["X-Content-Type-Options"] = "nosniff"
    # Live state: nothing the API or page answers may be served from a cache.
    # Static files set their own Cache-Control and keep it.
    response.headers.setdefault("Cache-Control", "no-store")
    return response
