"""`kill -9` of a real `tradeguard run` process, then a restart on the same store.

The process runs from a TOML config against loopback stand-ins started here:
the exchange (by IP literal), a fallback DNS server that knows the Telegram
and broker names (the real system resolver cannot resolve `.test` names), a
Telegram stand-in and a BrokerServer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.net import free_port
from tests.support.service_proc import ServiceProcess
from tests.support.waiting import wait_until
from tradeguard.sim.broker_server import BrokerServer
from tradeguard.sim.dns_server import DnsServer
from tradeguard.sim.exchange import SimExchange
from tradeguard.sim.telegram_server import TelegramServer

TG_HOST = "telegram.tradeguard.test"
BROKER_HOST = "broker.tradeguard.test"
BOT_TOKEN = "654321:kill9-bot-token-SECRET"
BROKER_TOKEN = "kill9-broker-token-SECRET"
FILL = 97.5



@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        server.set_record(TG_HOST, ["127.0.0.1"])
        server.set_record(BROKER_HOST, ["127.0.0.1"])
        yield server


def sections(exchange: SimExchange, dns: DnsServer, **extra: dict[str, Any]) -> dict[str, Any]:
    raw: dict[str, dict[str, Any]] = {
        "feed": {"url": exchange.url_for("127.0.0.1"), "reconnect_initial_delay": 0.05,
                 "reconnect_max_delay": 0.5, "connect_timeout": 2.0},
        "dns": {"fallback_servers": [dns.address], "timeout": 1.0, "system_head_start": 0.05},
        "monitor": {"sweep_interval": 0.2},
    }
    raw.update(extra)
    return raw


def subscribed(service: ServiceProcess, exchange: SimExchange, symbol: str) -> bool:
    return bool(service.health()["websocket"]["connected"]) and any(
        symbol in s for s in exchange.subscriptions)


def position(service: ServiceProcess, symbol: str) -> dict[str, Any]:
    return next(p for p in reversed(service.positions()) if p["symbol"] == symbol)


def open_long(service: ServiceProcess, symbol: str, entry: float, stop: float) -> None:
    status, body = service.call("POST", "/api/v1/positions", {
        "symbol": symbol, "side": "long", "quantity": 3, "entry_price": entry,
        "stop_loss": stop, "take_profit": None})
    assert status == 201, body


def queued(service: ServiceProcess) -> int:
    return int(service.health()["alerts"]["queued"])


def test_a_queued_alert_is_delivered_once_after_kill9(
    tmp_path: Path, exchange: SimExchange, dns: DnsServer
) -> None:
    tg_port = free_port()  # Telegram is down: nothing listens here yet
    config = sections(exchange, dns, telegram={
        "bot_token": BOT_TOKEN, "chat_id": "42", "api_base": f"http://{TG_HOST}:{tg_port}"})
    with ServiceProcess(tmp_path, config) as service:
        service.start()
        open_long(service, "BOSCHLTD", 735.0, 700.0)
        wait_until(lambda: subscribed(service, exchange, "BOSCHLTD"), 10)
        exchange.send_tick("BOSCHLTD", 741.0)
        wait_until(lambda: service.health()["price_cache"]["cached_symbols"] == 1, 10)
        status, body = service.call("POST", "/api/v1/monitoring/emergency-close-position",
                                    {"symbol": "BOSCHLTD"})
        assert status == 200, body
        wait_until(lambda: "[NOTIFY] Telegram delivery failed" in service.stderr, 10)
        assert queued(service) == 1
        service.kill9()

        with TelegramServer(BOT_TOKEN, port=tg_port) as telegram:
            service.start()  # the same store
            assert telegram.wait_for(1, 15), service.stderr[-2000:]
            wait_until(lambda: queued(service) == 0, 10)
            assert service.stop() == 0
            closed = [text for _, text in telegram.messages if "position closed" in text]
            assert len(closed) == 1, telegram.messages
            assert closed[0].startswith("BOSCHLTD: position closed (emergency)\n"
                                        "Long 3 closed at ₹741.00")
            assert {chat for chat, _ in telegram.messages} == {"42"}
        assert service.returncodes == [-9, 0]


def test_kill9_while_the_broker_answers_a_close(
    tmp_path: Path, exchange: SimExchange, dns: DnsServer
) -> None:
    with BrokerServer(BROKER_TOKEN, price_for=lambda symbol: FILL) as broker:
        config = sections(exchange, dns, broker={
            "kind": "http", "url": f"http://{BROKER_HOST}:{broker.port}",
            "token": BROKER_TOKEN, "timeout": 20.0})
        with ServiceProcess(tmp_path, config) as service:
            service.start()
            open_long(service, "AAA", 100.0, 98.0)
            wait_until(lambda: subscribed(service, exchange, "AAA"), 10)
            broker.slow(30.0)  # records the order, then keeps the answer back
            exchange.send_ticks([("AAA", 99.5), ("AAA", 97.9), ("AAA", 99.5)])
            wait_until(lambda: broker.order_count == 1, 10)
            assert position(service, "AAA")["state"] == "closing"
            service.kill9()
            broker.slow(0)  # the answer goes to a dead socket

            service.start()
            wait_until(lambda: position(service, "AAA")["state"] == "closed", 15)
            closed = position(service, "AAA")
            assert service.stop() == 0
        assert broker.order_count == 1
        (client_order_id, order), = broker.orders.items()
        assert closed["reason"] == "stop_loss" and closed["exit_price"] == FILL
        assert closed["order_id"] == order["order_id"]
        assert closed["client_order_id"] == client_order_id
        assert f"broker already filled {client_order_id}" in service.stderr
        assert set(broker.hosts) == {f"{BROKER_HOST}:{broker.port}"}


def test_kill9_mid_retries_with_the_broker_down_still_alerts_and_closes_once(
    tmp_path: Path, exchange: SimExchange, dns: DnsServer
) -> None:
    with BrokerServer(BROKER_TOKEN, price_for=lambda symbol: FILL) as broker:
        broker.down()
        config = sections(exchange, dns, broker={
            "kind": "http", "url": f"http://{BROKER_HOST}:{broker.port}",
            "token": BROKER_TOKEN, "timeout": 2.0})
        with ServiceProcess(tmp_path, config) as service:
            service.start()
            open_long(service, "AAA", 100.0, 98.0)
            wait_until(lambda: subscribed(service, exchange, "AAA"), 10)
            exchange.send_tick("AAA", 97.0)
            wait_until(lambda: "[CLOSE] AAA: attempt 1 failed" in service.stderr, 10)
            service.kill9()  # in the middle of the first round of retries
            assert "close FAILED" not in service.stderr

            before = len(service.stderr)
            service.start()
            failed_alert = "[ALERT] CRITICAL: AAA: close FAILED"
            wait_until(lambda: failed_alert in service.stderr[before:], 15)
            # The sweep's next round fails too, and says nothing new.
            wait_until(lambda: "[CLOSE] AAA: attempt 4 failed" in service.stderr[before:], 15)
            assert service.stderr[before:].count(failed_alert) == 1
            assert position(service, "AAA")["state"] in ("close_failed", "closing")

            broker.up()
            wait_until(lambda: position(service, "AAA")["state"] == "closed", 20)
            assert service.stop() == 0
        assert broker.order_count == 1
