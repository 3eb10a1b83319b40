"""DnsHealthActor: checks the system resolver and every fallback server.

Every `dns.health_interval`, and when the feed asks (`Kick`), a worker thread
this actor owns queries each resolver for the feed's host; the results go to
`DnsStatus` for the health endpoint and metrics. System DNS going down and
coming back are one alert each, never one per check.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import urlsplit

from actors.base import GuardActor
from actors.messages import Kick, Timer, WorkerDone
from tradeguard import alerts
from tradeguard.health import ServerHealth

logger = logging.getLogger(__name__)

PROBE_HOST = "localhost"  # checked when no feed host is configured


class DnsHealthActor(GuardActor):
    def setup(self) -> None:
        cfg = self.services.cfg
        self._host = urlsplit(cfg.feed.url).hostname or PROBE_HOST
        self._checking = False
        self.every("check", cfg.dns.health_interval)
        self._start_check()

    def handle(self, message: object) -> object:
        if isinstance(message, Timer | Kick):
            self._start_check()
        elif isinstance(message, WorkerDone):
            self._checking = False
            if message.error is not None:
                raise message.error  # a check that raised is a bug: let the supervisor see it
            assert isinstance(message.result, tuple)
            self._record(*message.result)
        else:
            return super().handle(message)
        return None

    def _start_check(self) -> None:
        if self._checking:
            return  # one check at a time; a request during a check is answered by it
        resolver, servers, host = self.services.resolver, self._servers(), self._host

        def check() -> None:
            try:
                system = ServerHealth(*resolver.check_system(host))
                results = {s: ServerHealth(*resolver.check_server(s, host)) for s in servers}
                done = WorkerDone("dns", result=(system, results))
            except Exception as exc:  # noqa: BLE001 - handed to the actor, which raises it
                done = WorkerDone("dns", error=exc)
            self.post(done)

        self._checking = True
        # Joined at teardown for as long as one check may take, then left fenced.
        self.own_thread(check, "dns-health-check",
                        join_timeout=self.services.cfg.dns.timeout + 1.0)

    def _servers(self) -> list[str]:
        return list(self.services.cfg.dns.fallback_servers)

    def _record(self, system: ServerHealth, servers: dict[str, ServerHealth]) -> None:
        status = self.services.dns_status
        down_since = status.down_since
        change = status.record(system, servers, time.time())
        if change == "down":
            logger.error("[DNS] System DNS failed: %s", system.error)
            self.services.alerts.alert(alerts.dns_down(system.error or "no answer"))
        elif change == "back":
            down_for = time.time() - down_since if down_since else 0.0
            logger.warning("[DNS] System DNS is back (down %.0fs)", down_for)
            self.services.alerts.alert(alerts.dns_back(down_for))
