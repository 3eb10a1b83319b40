"""The whole service on loopback, for integration tests.

A real WebSocket exchange, a real DNS server that knows the feed's `.test`
hostname, a real Telegram stand-in, a real SQLite file, and the real System
(every actor under the supervisor) with fast timers. The system resolver is a
`SwitchableLookup`: tests make it fail, hang or answer, as an operator's
broken resolver would.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

from actors.system import System
from tests.support.net import call_json
from tradeguard.brokers import Broker
from tradeguard.config import DEFAULT_SESSIONS, Config, config_from_mapping
from tradeguard.sim.dns_server import DnsServer
from tradeguard.sim.exchange import SimExchange
from tradeguard.sim.telegram_server import TelegramServer

FEED_HOST = "feed.tradeguard.test"
TG_HOST = "telegram.tradeguard.test"
BOT_TOKEN = "123456:test-bot-token-SECRET"
API_TOKEN = "api-token-SECRET-0123456789"


class SwitchableLookup:
    """A system resolver a test can break: "fail", "hang" (until released) or "answer"."""

    def __init__(self) -> None:
        self.mode = "fail"
        self.answers: dict[str, list[str]] = {}
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, host: str) -> list[str]:
        self.calls += 1
        if self.mode == "hang":
            self.release.wait()
            raise OSError("system resolver hung")
        if self.mode == "answer" and host in self.answers:
            return list(self.answers[host])
        raise OSError(f"[Errno -3] Temporary failure in name resolution ({host})")


def fast_config(tmp_path: Path, exchange: SimExchange, dns: DnsServer,
                telegram: TelegramServer | None, sections: dict[str, dict[str, Any]]) -> Config:
    raw: dict[str, dict[str, Any]] = {
        "feed": {"url": exchange.url_for(FEED_HOST), "ping_interval": 1.0, "ping_timeout": 0.5,
                 "silence_timeout": 3.0, "reconnect_initial_delay": 0.05,
                 "reconnect_max_delay": 0.5, "connect_timeout": 2.0, "stable_after": 1.0},
        "dns": {"fallback_servers": [dns.address], "timeout": 1.0, "system_head_start": 0.05,
                "health_interval": 60.0},
        "prices": {"stale_warning_threshold": 30, "cache_timeout": 300},
        "monitor": {"sweep_interval": 0.1},
        "api": {"token": API_TOKEN, "port": 8080},
        "store": {"path": str(tmp_path / "tradeguard.db")},
        "supervisor": {"liveness_interval": 0.5, "liveness_timeout": 0.3,
                       "restart_backoff_min": 0.05, "restart_backoff_max": 0.5,
                       "max_restarts": 50, "within_seconds": 30},
        "debug": {"fault_injection": True},
        # Every exchange in session around the clock, so a test passes whenever it runs;
        # the trading-day tests (test_trading_day.py) give their own [market].
        "market": {"sessions": dict.fromkeys(DEFAULT_SESSIONS, "always")},
    }
    if telegram is not None:
        # By name, so alerts go through the resolver ladder like the feed does.
        raw["telegram"] = {"bot_token": BOT_TOKEN, "chat_id": "42",
                           "api_base": f"http://{TG_HOST}:{telegram.port}"}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config_from_mapping(raw, {})


@dataclass
class Harness:
    cfg: Config
    system: System
    exchange: SimExchange
    dns: DnsServer
    telegram: TelegramServer | None
    lookup: SwitchableLookup

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.system.api_port}"

    def call(self, method: str, path: str, body: Any = None,
             token: str | None = API_TOKEN) -> tuple[int, Any]:
        return call_json(self.url + path, method, body, token)

    def open_long(self, symbol: str, entry: float, stop: float | None,
                  target: float | None = None, quantity: float = 10) -> dict[str, Any]:
        status, body = self.call("POST", "/api/v1/positions", {
            "symbol": symbol, "side": "long", "quantity": quantity, "entry_price": entry,
            "stop_loss": stop, "take_profit": target})
        assert status == 201, body
        return dict(body)

    def position(self, symbol: str) -> Any:
        return self.system.services.store.live_position(symbol) or next(
            (p for p in reversed(self.system.services.store.positions()) if p.symbol == symbol),
            None)


def tls_for(tmp_path: Path, cert_name: str) -> tuple[ssl.SSLContext, str]:
    """A server context with a certificate for `cert_name` and the CA file that trusts it."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(cert_name).configure_cert(server_ctx)
    ca_file = tmp_path / "feed-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return server_ctx, str(ca_file)


@contextmanager
def running(tmp_path: Path, *, telegram: bool = False, broker: Broker | None = None,
            tls_cert_name: str | None = None, broker_section: dict[str, Any] | None = None,
            **sections: dict[str, Any]) -> Iterator[Harness]:
    """Start the exchange, DNS, (Telegram) and the System; stop all of it after.

    With `tls_cert_name` the feed is wss:// with a certificate issued for that
    name by a test CA, which `feed.ca_file` trusts.
    """
    lookup = SwitchableLookup()
    if broker_section is not None:  # [broker] as config (`broker` is a Broker object)
        sections["broker"] = broker_section
    server_ctx = None
    if tls_cert_name is not None:
        server_ctx, ca_file = tls_for(tmp_path, tls_cert_name)
        sections.setdefault("feed", {})["ca_file"] = ca_file
    with SimExchange(ssl_context=server_ctx) as exchange, DnsServer() as dns:
        dns.set_record(FEED_HOST, ["127.0.0.1"])
        dns.set_record(TG_HOST, ["127.0.0.1"])
        tg = TelegramServer(BOT_TOKEN).start() if telegram else None
        try:
            cfg = fast_config(tmp_path, exchange, dns, tg, sections)
            system = System(cfg, system_lookup=lookup, broker=broker, api_port=0)
            system.start()
            try:
                assert system.wait_started(10), "the system did not come up"
                yield Harness(cfg, system, exchange, dns, tg, lookup)
            finally:
                lookup.release.set()
                system.stop()
        finally:
            if tg is not None:
                tg.stop()
