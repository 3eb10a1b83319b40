"""ApiActor: serves the Flask app with waitress on `api.host:api.port`.

The serving loop runs in a thread this actor owns and is stopped by the same
thread that runs it (waitress is not safe to close from another thread), as
soon as this incarnation's stop event is set.
"""

from __future__ import annotations

import logging
import threading
import time

from flask import Flask
from waitress.wasyncore import loop

from actors.base import GuardActor
from tradeguard.web.app import create_app
from tradeguard.web.server import Listener, listen

logger = logging.getLogger(__name__)

LOOP_TIMEOUT = 0.2
BIND_ATTEMPTS = 10


class ApiActor(GuardActor):
    def setup(self) -> None:
        api = self.services.api
        assert api is not None, "the System sets services.api before starting children"
        cfg = self.services.cfg.api
        self._listener = self._bind(create_app(api), cfg.host, self.services.api_port)
        self.services.api_port = self._listener.port
        self._thread = threading.Thread(target=self._serve, name="api-http")
        self._thread.start()
        logger.info("[API] listening on http://%s:%s/", cfg.host, self.services.api_port)

    def _bind(self, app: Flask, host: str, port: int) -> Listener:
        # A previous incarnation may still be releasing the port; retry briefly.
        for attempt in range(BIND_ATTEMPTS):
            try:
                return listen(app, host, port)
            except OSError:
                if attempt == BIND_ATTEMPTS - 1:
                    raise
                time.sleep(0.1 * (attempt + 1))
        raise AssertionError("unreachable")

    def _serve(self) -> None:
        listener, stop = self._listener, self.ctx.stop_event
        try:
            while not stop.is_set():
                loop(timeout=LOOP_TIMEOUT, map=listener.socket_map, count=1)
        finally:
            listener.close()

    def teardown(self) -> None:
        thread = getattr(self, "_thread", None)
        if thread is not None:
            thread.join(5.0)
