"""ApiActor: serves the Flask app with waitress on `api.host:api.port`.

The serving loop runs in a thread this actor owns and is stopped by the same
thread that runs it (waitress is not safe to close from another thread), as
soon as this incarnation's stop event is set. If the loop dies of an error,
it tells the actor, which raises: the supervisor sees the death and restarts
ApiActor (finding C6). Without that, the mailbox would go on answering
liveness pings while nothing served emergency close, /healthz or /metrics.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from waitress.wasyncore import loop

from actors.base import GuardActor
from tradeguard.web.app import create_app
from tradeguard.web.server import bind, listen

logger = logging.getLogger(__name__)

LOOP_TIMEOUT = 0.2
DRAIN_TIMEOUT = 4.0  # seconds a replaced incarnation keeps answering what it had read


@dataclass(frozen=True)
class ServingFailed:
    """The serving thread ended with an error; the actor dies of it."""

    error: str


class ServerDied(RuntimeError):
    """Raised by ApiActor when its serving thread has died."""


class ApiActor(GuardActor):
    def setup(self) -> None:
        endpoint, cfg = self.services.api, self.services.cfg.api
        app = create_app(endpoint.guard)
        if endpoint.sockets is None:  # the first incarnation binds; the next ones reuse them
            endpoint.sockets = bind(cfg.host, endpoint.port)
        self.listener = listen(app, endpoint.sockets)
        endpoint.bound = self.listener.port
        self.own_thread(self._serve, "api-http", join_timeout=DRAIN_TIMEOUT + 1.0)
        logger.info("[API] listening on http://%s:%s/", cfg.host, endpoint.bound)

    def handle(self, message: object) -> object:
        if isinstance(message, ServingFailed):
            raise ServerDied(f"HTTP serving thread died: {message.error}")
        return super().handle(message)

    def _serve(self) -> None:
        listener, stop = self.listener, self.ctx.stop_event
        try:
            while not stop.is_set():
                loop(timeout=LOOP_TIMEOUT, map=listener.socket_map, count=1)
            # Replaced or stopping: new connections wait for the next incarnation;
            # requests already read (an emergency close) still get their answer.
            listener.stop_accepting()
            deadline = time.monotonic() + DRAIN_TIMEOUT
            while listener.busy() and time.monotonic() < deadline:
                loop(timeout=LOOP_TIMEOUT, map=listener.socket_map, count=1)
        except Exception as exc:
            logger.exception("[API] the HTTP serving thread failed")
            self.post(ServingFailed(repr(exc)))
        finally:
            listener.close()
