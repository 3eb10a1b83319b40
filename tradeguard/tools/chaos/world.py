"""The world a chaos run breaks: TradeGuard and everything around it, on loopback.

The real System (every actor under its supervisor, SQLite, the HTTP API with
fault injection on) in this process, and the simulators it talks to: the
exchange feed, the fallback DNS server that knows every host's `.test` name,
an HTTP broker and a Telegram stand-in. TradeGuard reaches all three by name
through its resolver ladder, and the host's own resolver is a switch the run
can turn off. Timers are short so that a fault is noticed, and healed, within
seconds.
"""

from __future__ import annotations

import secrets
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from actors.system import System
from tradeguard.config import Config, config_from_mapping
from tradeguard.errors import TradeGuardError
from tradeguard.sim.broker_server import BrokerServer
from tradeguard.sim.dns_server import DnsServer
from tradeguard.sim.exchange import SimExchange
from tradeguard.sim.scenario import GuardClient
from tradeguard.sim.telegram_server import TelegramServer

FEED_HOST = "feed.chaos.test"
BROKER_HOST = "broker.chaos.test"
TELEGRAM_HOST = "telegram.chaos.test"
HOSTS = (FEED_HOST, BROKER_HOST, TELEGRAM_HOST)
START_WAIT = 20.0


class SystemResolver:
    """The host's resolver as a chaos run sees it: it knows the `.test` names, or it fails."""

    def __init__(self) -> None:
        self.failing = False

    def __call__(self, host: str) -> list[str]:
        if self.failing:
            raise OSError(f"[Errno -3] Temporary failure in name resolution ({host})")
        if host in HOSTS:
            return ["127.0.0.1"]
        raise OSError(f"[Errno -2] Name or service not known ({host})")


class World:
    """Starts the simulators and the System; stops all of it in reverse."""

    def __init__(self, directory: Path, symbols: list[str]) -> None:
        self.directory = directory
        self.symbols = symbols
        self.api_token = secrets.token_urlsafe(24)
        self.bot_token = f"4242:{secrets.token_urlsafe(16)}"
        self.resolver = SystemResolver()
        self.exchange = SimExchange()
        self.dns = DnsServer()
        self.broker = BrokerServer(secrets.token_urlsafe(16))
        self.telegram = TelegramServer(self.bot_token)
        self._dns_lock = threading.Lock()
        self.dns_address = ""
        self._system: System | None = None

    def __enter__(self) -> World:
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        self.dns.start()
        self.dns_address = self.dns.address  # kept: a stopped server no longer knows its port
        self._records(self.dns)
        self.exchange.start()
        self.broker.start()
        self.telegram.start()
        self._system = System(self.config(), system_lookup=self.resolver, api_port=0)
        self._system.start()
        if not self.system.wait_started(START_WAIT):
            raise TradeGuardError("TradeGuard did not come up")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._system is not None:
            self._system.stop()
        self.telegram.stop()
        self.broker.stop()
        self.exchange.stop()
        with self._dns_lock:
            self.dns.stop()

    def config(self) -> Config:
        raw: dict[str, dict[str, Any]] = {
            "feed": {"url": self.exchange.url_for(FEED_HOST), "symbols": self.symbols,
                     "ping_interval": 1.0, "ping_timeout": 0.5, "silence_timeout": 3.0,
                     "reconnect_initial_delay": 0.05, "reconnect_max_delay": 0.5,
                     "connect_timeout": 2.0, "stable_after": 1.0},
            "dns": {"fallback_servers": [self.dns_address], "timeout": 0.5,
                    "system_head_start": 0.05, "health_interval": 1.0},
            "monitor": {"sweep_interval": 0.2, "max_close_retries": 3},
            "broker": {"kind": "http", "url": f"http://{BROKER_HOST}:{self.broker.port}",
                       "token": self.broker.token, "timeout": 1.0},
            "api": {"token": self.api_token},
            "telegram": {"bot_token": self.bot_token, "chat_id": "42",
                         "api_base": f"http://{TELEGRAM_HOST}:{self.telegram.port}",
                         "max_per_minute": 600},
            "store": {"path": str(self.directory / "chaos.db")},
            # Restarts are what the run causes on purpose: the intensity limit is
            # kept out of reach, and liveness is checked often enough to see hangs.
            "supervisor": {"liveness_interval": 1.0, "liveness_timeout": 0.5,
                           "restart_backoff_min": 0.05, "restart_backoff_max": 0.5,
                           "max_restarts": 50, "within_seconds": 30},
            "debug": {"fault_injection": True},
        }
        return config_from_mapping(raw, {})

    @property
    def system(self) -> System:
        if self._system is None:
            raise TradeGuardError("the System is not started")
        return self._system

    def guard(self, timeout: float = 5.0) -> GuardClient:
        """The HTTP API as an operator reaches it (the port can change with a restart)."""
        return GuardClient(f"http://127.0.0.1:{self.system.api_port}",
                           self.api_token, timeout)

    # The fallback DNS server going away and coming back ---------------------

    def dns_down(self) -> None:
        """Stop the DNS server: its port answers ICMP unreachable until `dns_up`."""
        with self._dns_lock:
            self.dns.stop()

    def dns_up(self) -> None:
        """A new DNS server on the same port, knowing the same names."""
        with self._dns_lock:
            host, port = self.dns_address.rsplit(":", 1)
            server = DnsServer(host, int(port))
            server.start()
            self._records(server)
            self.dns = server

    def _records(self, server: DnsServer) -> None:
        for host in HOSTS:
            server.set_record(host, ["127.0.0.1"])
