"""`tradeguard demo --broker kite`: the demo's incident told against a Kite stand-in.

The stand-in (tradeguard/sim/kite/) speaks Kite's real protocols on loopback:
the binary ticker, the REST API with its headers, form bodies and error
shapes, the instrument master. Its hostnames are `.test` names that only the
demo's fallback DNS server knows, so the resolver ladder is exercised as in
the plain demo. The story: DNS fails over, the ticker drops and comes back, a
stop-loss closes with one tagged order, the trader closes a position by hand
in Kite's app (TradeGuard sends nothing), an operator closes one by API, and
the morning token expiry is one alert, fixed by writing the new token to the
token file.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from actors.system import System
from tradeguard.alerts import duration, money
from tradeguard.brokers import KINDS
from tradeguard.config import Config, config_from_mapping
from tradeguard.errors import TradeGuardError
from tradeguard.exits import EX_OK, EX_SOFTWARE
from tradeguard.feed import PROTOCOLS
from tradeguard.sim.dns_server import DnsServer
from tradeguard.sim.kite import KiteStandIn
from tradeguard.sim.scenario import GuardClient, LogQuotes, Narrator

API_HOST = "api.kite.tradeguard.test"
WS_HOST = "ws.kite.tradeguard.test"
PRICES = {"NSE:BOSCHLTD": 735.0, "NSE:INFY": 1520.0, "NSE:RELIANCE": 2950.0}
LONG: dict[str, Any] = {"symbol": "NSE:BOSCHLTD", "side": "long", "quantity": 10,
                        "entry_price": 735.0, "stop_loss": 700.0, "take_profit": 800.0,
                        "product": "MIS"}
SHORT: dict[str, Any] = {"symbol": "NSE:INFY", "side": "short", "quantity": 5,
                         "entry_price": 1520.0, "stop_loss": 1600.0, "take_profit": 1450.0,
                         "product": "MIS"}
BY_HAND: dict[str, Any] = {"symbol": "NSE:RELIANCE", "side": "long", "quantity": 4,
                           "entry_price": 2950.0, "stop_loss": 2900.0, "take_profit": 3100.0,
                           "product": "MIS"}
SLIDE = (718.0, 706.0, 698.6)
OUTAGE = 5.0
WAIT = 20.0
EMERGENCY = "/api/v1/monitoring/emergency-close-position"
NEW_TOKEN = "morningtoken" + "0002"


def kite_ready() -> str:
    """'' when TradeGuard's Kite broker and ticker are wired in, else what is missing."""
    missing = [what for what, ok in (("broker.kind kite", "kite" in KINDS),
                                     ("feed.protocol kite", "kite" in PROTOCOLS)) if not ok]
    return ", ".join(missing)


def kite_config(kite: KiteStandIn, dns: DnsServer, tmp: Path, token: str) -> Config:
    token_file = tmp / "kite-token"
    token_file.write_text(kite.book.access_token + "\n", encoding="utf-8")
    token_file.chmod(0o600)
    assert kite.rest is not None
    raw: dict[str, Any] = {
        "feed": {"protocol": "kite", "mode": "full", "url": f"ws://{WS_HOST}:{kite.ticker.port}/",
                 "symbols": list(PRICES), "connect_timeout": 2.0,
                 "reconnect_initial_delay": 0.2, "reconnect_max_delay": 1.0,
                 "stable_after": 2.0, "ping_interval": 2.0, "ping_timeout": 1.0,
                 "silence_timeout": 3.0},
        "broker": {"kind": "kite", "url": f"http://{API_HOST}:{kite.rest.port}",
                   "api_key": kite.book.api_key, "token_file": str(token_file),
                   "timeout": 3.0},
        "dns": {"fallback_servers": [dns.address], "timeout": 1.0, "system_head_start": 0.05},
        "prices": {"stale_warning_threshold": 3.0, "cache_timeout": 60.0},
        "monitor": {"sweep_interval": 0.25},
        "market": {"sessions": {"NSE": "always"}},
        "api": {"host": "127.0.0.1", "token": token},
        "store": {"path": str(tmp / "tradeguard.db")},
        "supervisor": {"liveness_interval": 1.0, "liveness_timeout": 0.5},
    }
    return config_from_mapping(raw, {})


class Walk:
    """Prices moving at random on the stand-in, a tick size at a time."""

    def __init__(self, kite: KiteStandIn, prices: dict[str, float], seed: int = 7) -> None:
        self._kite = kite
        self._prices = dict(prices)
        self._held: set[str] = set()  # moved by the story only
        self._lock = threading.Lock()
        self._rng = random.Random(seed)  # noqa: S311 - a simulation
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kite-demo-walk", daemon=True)

    def start(self) -> Walk:
        for symbol, price in self._prices.items():
            self._kite.set_price(symbol, price)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def push(self, symbol: str, price: float) -> None:
        with self._lock:
            if symbol not in self._held:
                self._prices[symbol] = price
            self._kite.set_price(symbol, price)

    def hold(self, symbol: str) -> None:
        """Stop moving `symbol` (its story is told by hand from now on)."""
        with self._lock:
            self._held.add(symbol)
            self._prices.pop(symbol, None)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            with self._lock:
                for symbol, price in self._prices.items():
                    moved = round(price * (1 + self._rng.uniform(-0.001, 0.001)) * 20) / 20
                    self._prices[symbol] = moved
                    self._kite.set_price(symbol, moved)


class KiteStory:
    """The incident against Kite, one method a chapter, each checking what it tells."""

    def __init__(self, system: System, kite: KiteStandIn, *, dns: DnsServer, walk: Walk,
                 guard: GuardClient, narrator: Narrator, token_file: Path) -> None:
        self.system, self.kite, self.dns, self.walk = system, kite, dns, walk
        self.guard, self.n, self.token_file = guard, narrator, token_file
        self.currency = system.cfg.display.currency
        self.down_for = 0.0

    def tell(self) -> None:
        for chapter in (self.setting, self.connected, self.open_positions, self.ticks_flow,
                        self.feed_down,
                        self.stop_loss, self.closed_by_hand, self.emergency_close,
                        self.token_expiry, self.summary):
            chapter()

    # Reading TradeGuard and the stand-in ------------------------------------

    def money(self, value: float, *, signed: bool = False) -> str:
        return money(value, self.currency, signed=signed)

    def websocket(self) -> dict[str, Any] | None:
        ws: dict[str, Any] = self.guard.health()["websocket"]
        return ws if ws["connected"] else None

    def position(self, symbol: str) -> dict[str, Any]:
        return [p for p in self.guard.positions() if p["symbol"] == symbol][-1]

    def closed(self, symbol: str) -> dict[str, Any] | None:
        p = self.position(symbol)
        return p if p["state"] == "closed" else None

    def prices(self, *symbols: str) -> str:
        entries = self.guard.health()["price_cache"]["cache_entries"]
        shown = []
        for symbol in symbols:
            e = entries[symbol]
            stale = ", stale" if e["is_stale"] else ""
            shown.append(f"{symbol} {self.money(e['price'])} "
                         f"({duration(e['age_seconds'])} old{stale})")
        return "   ".join(shown)

    def ticks(self) -> float:
        return self.guard.metric("tradeguard_feed_ticks_total")

    def more_ticks(self, count: int) -> None:
        start = self.ticks()
        self.n.until(lambda: self.ticks() >= start + count, WAIT, f"{count} more ticks")

    def alerted(self, kind: str, count: int = 1) -> bool:
        return self.n.alerts[kind] >= count

    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every REST request the stand-in has seen."""
        assert self.kite.rest is not None
        return [(method, path) for method, path, _ in list(self.kite.rest.seen)]

    def api_orders(self) -> list[dict[str, Any]]:
        """The orders TradeGuard (not the trader's app) placed at the stand-in."""
        return [o for o in self.kite.book.order_book() if o["placed_by"] != "KITEWEB"]

    # The chapters -------------------------------------------------------------

    def setting(self) -> None:
        assert self.kite.rest is not None
        self.n.step("Setting up, all on 127.0.0.1")
        self.n.say(
            f"Kite stand-in  REST  http://{API_HOST}:{self.kite.rest.port} "
            f"(X-Kite-Version 3, form bodies)\n"
            f"               ticker ws://{WS_HOST}:{self.kite.ticker.port}/ "
            f"(binary packets, heartbeats)\n"
            f"DNS server     {self.dns.address}, TradeGuard's fallback; it knows both names\n"
            f"access token   in {self.token_file} (the morning routine writes it there)\n"
            f"TradeGuard     API and status page at {self.guard.base_url}/")

    def connected(self) -> None:
        n = self.n
        n.step("1. DNS fails over, the ticker connects and subscribes")
        ws = n.until(self.websocket, WAIT, "the first ticker connection")
        n.until(self.kite.ticker.subscriptions, WAIT, "the subscription")
        [tokens] = self.kite.ticker.subscriptions()
        n.say(f"No system resolver knows {WS_HOST}; the fallback answered: connected to "
              f"{ws['connected_ip']}\n(resolved_via {ws['resolved_via']}). TradeGuard "
              f"subscribed {len(tokens)} instrument tokens in "
              f"'{next(iter(tokens.values()))}' mode: "
              f"{', '.join(str(t) for t in sorted(tokens))}.")
        if not str(ws["resolved_via"]).startswith("fallback:"):
            raise TradeGuardError(f"{WS_HOST} resolved via {ws['resolved_via']}")

    def open_positions(self) -> None:
        self.n.step("2. The trader's positions at Kite, guarded through the API")
        for body in (LONG, SHORT, BY_HAND):
            signed = body["quantity"] if body["side"] == "long" else -body["quantity"]
            self.kite.book.hold(body["symbol"], signed, body["entry_price"], body["product"])
            status, answer = self.guard.call("POST", "/api/v1/positions", body)
            if status != 201:
                raise TradeGuardError(f"opening {body['symbol']}: {status} {answer}")
            self.n.say(f"{answer['side']} {answer['symbol']} x{answer['quantity']:g} "
                       f"{answer.get('product', '')} at {self.money(answer['entry_price'])}, "
                       f"stop {self.money(answer['stop_loss'])}, "
                       f"target {self.money(answer['take_profit'])}")

    def ticks_flow(self) -> None:
        self.n.step("3. Ticks flow: Kite's full-mode packets, decoded by TradeGuard")
        self.more_ticks(20)
        self.n.say(self.prices(*PRICES))
        self.n.say(f"{self.ticks():.0f} ticks so far; each is checked against its position's "
                   "stop-loss and take-profit as it arrives.")

    def feed_down(self) -> None:
        n = self.n
        n.step("4. The ticker goes down, then comes back")
        down_at = time.monotonic()
        self.kite.ticker.stop()
        n.until(lambda: self.websocket() is None, WAIT, "TradeGuard noticing the outage")
        n.say("Kite's ticker closes and refuses connections. TradeGuard checks every stop on "
              "cached prices meanwhile, and says how old they are.")
        n.until(lambda: self.alerted("feed_lost"), WAIT, "the feed-lost alert")
        n.pause(down_at + OUTAGE - time.monotonic())
        n.say(f"down {duration(time.monotonic() - down_at)}  "
              f"{self.prices(LONG['symbol'], SHORT['symbol'])}")
        self.kite.ticker.start()
        ws = n.until(self.websocket, WAIT, "the reconnect")
        self.down_for = time.monotonic() - down_at
        n.until(self.kite.ticker.subscriptions, WAIT, "the resubscription")
        n.say(f"Back after {duration(self.down_for)}: reconnected via {ws['resolved_via']} "
              "and subscribed again.")

    def stop_loss(self) -> None:
        n, symbol = self.n, LONG["symbol"]
        n.step(f"5. {symbol} falls through its stop-loss at {self.money(LONG['stop_loss'])}")
        self.walk.hold(symbol)
        self.kite.book.fail_next(502, "/orders/regular")
        seen = len(self.requests())
        for price in SLIDE[:-1]:
            self.walk.push(symbol, price)
            n.pause(0.4)
        self.walk.push(symbol, SLIDE[-1])
        n.say("Kite's ticker sends " + ", ".join(self.money(p) for p in SLIDE) + ".")
        closed = n.until(lambda: self.closed(symbol), WAIT, f"{symbol}'s stop-loss close")
        [order] = [o for o in self.api_orders() if o["tradingsymbol"] == "BOSCHLTD"]
        n.say(f"TradeGuard sold {closed['quantity']:g} at {self.money(closed['exit_price'])} "
              f"({closed['reason']}), P&L {self.money(closed['pnl'], signed=True)}.\n"
              f"At Kite: POST /orders/regular {order['transaction_type']} {order['quantity']} "
              f"{order['order_type']} {order['product']}, market_protection "
              f"{order['market_protection']}, tag {order['tag']} -> {order['status']}.")
        self.after_502(self.requests()[seen:])
        self.walk.push(symbol, 690.0)
        n.pause(1.0)
        count = len([o for o in self.api_orders() if o["tradingsymbol"] == "BOSCHLTD"])
        if count != 1 or self.kite.book.net_quantity(symbol) != 0:
            raise TradeGuardError(f"{symbol}: {count} orders at Kite")
        n.say("Lower ticks change nothing: one order at Kite, Kite holds none of it.")

    def after_502(self, calls: list[tuple[str, str]]) -> None:
        posts = calls.count(("POST", "/orders/regular"))
        lookups = calls.count(("GET", "/orders"))
        self.n.say(f"Kite's gateway answered the first POST with an HTML 502. TradeGuard looked "
                   f"the tag up in\nthe order book ({lookups} GET /orders: not there) and sent "
                   f"it again: {posts} POSTs, 1 order.")
        if posts < 2:
            raise TradeGuardError(f"{posts} POST /orders/regular after a 502")

    def closed_by_hand(self) -> None:
        n, symbol = self.n, BY_HAND["symbol"]
        n.step(f"6. The trader squares off {symbol} in Kite's own app")
        self.walk.hold(symbol)
        self.kite.book.close_by_hand(symbol, BY_HAND["product"])
        n.say(f"Kite now holds no {symbol}; TradeGuard still guards it, stop "
              f"{self.money(BY_HAND['stop_loss'])}. The price falls through that stop.")
        before = len(self.api_orders())
        self.walk.push(symbol, 2890.0)
        closed = n.until(lambda: self.closed(symbol), WAIT, f"{symbol} closed at the broker")
        n.until(lambda: self.alerted("closed_at_broker"), WAIT, "the closed-at-broker alert")
        sent = len(self.api_orders()) - before
        n.say(f"TradeGuard saw Kite holds none: no order sent ({sent}), position "
              f"{closed['state']} with reason {closed['reason']}. A SELL here would have "
              "opened a short.")
        if sent or closed["reason"] != "closed_at_broker" or self.kite.book.net_quantity(symbol):
            raise TradeGuardError(f"{symbol}: {sent} orders sent, reason {closed['reason']}")

    def emergency_close(self) -> None:
        n, symbol = self.n, SHORT["symbol"]
        n.step(f"7. Closing {symbol} by hand through TradeGuard, as an operator would")
        status, answer = self.guard.call("POST", EMERGENCY, {"symbol": symbol,
                                                             "reason": "emergency"})
        if status != 200:
            raise TradeGuardError(f"the emergency close answered {status}: {answer}")
        n.say(f"POST {EMERGENCY} -> {status}: bought back {answer['quantity']:g} at "
              f"{self.money(answer['exit_price'])}, Kite order {answer['order_id']}, "
              f"P&L {self.money(answer['pnl'], signed=True)}.")
        if self.kite.book.net_quantity(symbol) != 0:
            raise TradeGuardError(f"Kite still holds {symbol}")

    def token_expiry(self) -> None:
        n = self.n
        n.step("8. 06:00 IST: Kite expires the access token")
        refused = self.kite.ticker.refused
        self.kite.book.rotate_token(NEW_TOKEN)
        self.kite.ticker.drop_connections()
        n.until(lambda: self.alerted("feed_token_rejected"), WAIT, "the token alert")
        n.pause(2.5)
        attempts = self.kite.ticker.refused - refused
        n.say(f"The ticker refuses the old token at the handshake (403): one critical alert, "
              f"{attempts} refused attempts in 2.5 s, no storm.")
        self.token_file.write_text(NEW_TOKEN + "\n", encoding="utf-8")
        n.say(f"The trader logs in and writes the new token to {self.token_file.name}.")
        written = time.monotonic()
        n.until(self.websocket, WAIT, "the reconnect with the new token")
        took = time.monotonic() - written
        self.more_ticks(3)
        n.say(f"TradeGuard re-read the file and reconnected {duration(took)} later; "
              "ticks flow again.")

    def summary(self) -> None:
        n = self.n
        n.step("Summary")
        lines = []
        for p in self.guard.positions():
            exit_price = "-" if p["exit_price"] is None else self.money(p["exit_price"])
            lines.append(f"  {p['symbol']:<13} {p['side']:<5} {p['quantity']:>3g} at "
                         f"{self.money(p['entry_price'])} -> {exit_price}  "
                         f"{p['reason'] or '':<16} {p['state']}")
        lines += [
            f"Orders at Kite:    {len(self.api_orders())} from TradeGuard "
            f"(each with its own tag), 1 by hand in Kite's app",
            f"Ticker reconnects: {self.kite.ticker.accepted - 1}",
            f"Alerts:            {sum(n.alerts.values())} "
            f"({', '.join(f'{k} {c}' for k, c in n.alerts.items())})",
        ]
        n.say("\n".join(lines))


Stopper = Callable[[Callable[[], None]], None]


def _stand_ins(stack: ExitStack, uninterrupted: Stopper) -> tuple[KiteStandIn, DnsServer]:
    """The Kite stand-in and the DNS server that alone knows its names, stopped by `stack`."""
    kite = KiteStandIn(heartbeat_interval=1.0).start()
    stack.callback(uninterrupted, kite.stop)
    dns = DnsServer().start()
    stack.callback(uninterrupted, dns.stop)
    for host in (API_HOST, WS_HOST):
        dns.set_record(host, ["127.0.0.1"])
    return kite, dns


def run_kite(store_dir: Path, quotes: LogQuotes, started: float) -> int:
    """The Kite story; the caller has set up logging and the temp dir (demo.py)."""
    from tradeguard.tools.demo import _report_failure, _uninterrupted, _wait_up  # noqa: PLC0415

    print("TradeGuard demo against a Kite Connect stand-in on this machine, with the network\n"
          "and the token failing on purpose. It takes about 30 seconds.", flush=True)
    with ExitStack() as stack:
        try:
            kite, dns = _stand_ins(stack, _uninterrupted)
            walk = Walk(kite, PRICES).start()
            stack.callback(walk.stop)
            cfg = kite_config(kite, dns, store_dir, secrets.token_urlsafe(24))
            system = System(cfg, api_port=0)
            stack.callback(_uninterrupted, system.stop)
            system.start()
            _wait_up(system)
            guard = GuardClient(f"http://127.0.0.1:{system.api_port}", system.api_token)
            narrator = Narrator(guard, quotes, started=started)
            KiteStory(system, kite, dns=dns, walk=walk, guard=guard, narrator=narrator,
                      token_file=Path(cfg.broker.token_file)).tell()
        except TradeGuardError as exc:
            _report_failure(exc, store_dir / "tradeguard.log")
            return EX_SOFTWARE
    print(f"\nDone in {duration(narrator.elapsed())}: every step happened as told.", flush=True)
    return EX_OK
