"""`tradeguard demo`: the real service against a simulated market, told as it happens.

Everything runs in this process, on loopback: a simulated exchange (a
WebSocket feed of random walks) whose `.test` hostname only a fallback DNS
server knows, the paper broker, SQLite in a temporary directory, and the real
System with every actor under its supervisor. The story talks to TradeGuard
as an operator would, over HTTP with the API token, and tells what it sees:
connection-health, positions, /metrics, alerts and a few log lines. Each
claim is checked as it is made; the demo exits 0 only if all of them held.
"""

from __future__ import annotations

import io
import logging
import math
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from actors.system import System
from tradeguard.alerts import duration, money
from tradeguard.brokers import PaperBroker
from tradeguard.config import Config, config_from_mapping
from tradeguard.errors import TradeGuardError
from tradeguard.exits import EX_CONFIG, EX_INTERRUPTED, EX_OK, EX_SOFTWARE
from tradeguard.logs import FORMAT
from tradeguard.sim.scenario import GuardClient, LogQuotes, Narrator, SimMarket
from tradeguard.tools.demo_kite import kite_ready, run_kite

PRICES = {"BOSCHLTD": 735.0, "INFY": 1520.0, "RELIANCE": 2950.0}
SEED = 7  # the same random walk every run
LONG: dict[str, Any] = {"symbol": "BOSCHLTD", "side": "long", "quantity": 10,
                        "entry_price": 735.0, "stop_loss": 700.0, "take_profit": 800.0}
SHORT: dict[str, Any] = {"symbol": "INFY", "side": "short", "quantity": 5,
                         "entry_price": 1520.0, "stop_loss": 1600.0, "take_profit": 1450.0}
SLIDE = (718.0, 706.0, 698.6)  # BOSCHLTD's fall through its stop-loss
CRASHED = "CacheActor"
STALE_AFTER = 3.0  # prices.stale_warning_threshold, short enough to see within the outage
OUTAGE = 6.0  # seconds the exchange stays down
WAIT = 20.0  # the longest any one event may take before the demo calls it failed
QUOTED = ("[DNS] System DNS failed", "[DNS] Resolved", "[FALLBACK]", "[MONITOR]")
QUOTED_ONCE = ("[DNS] System DNS failed", "[DNS] Resolved")  # these repeat on every reconnect
EMERGENCY = "/api/v1/monitoring/emergency-close-position"
LOG_TAIL = 40  # lines of TradeGuard's log shown when the demo fails


def demo_config(market: SimMarket, store_dir: Path, token: str) -> Config:
    """The embedded defaults at a demo's pace: a minute has to hold a whole incident."""
    raw = market.config_sections()
    raw["feed"].update(connect_timeout=2.0, reconnect_initial_delay=0.2, reconnect_max_delay=1.0,
                       stable_after=2.0, ping_interval=2.0, ping_timeout=1.0,
                       silence_timeout=3.0)
    raw["dns"].update(timeout=1.0, system_head_start=0.05)
    raw["prices"] = {"stale_warning_threshold": STALE_AFTER, "cache_timeout": 60.0}
    raw["monitor"] = {"sweep_interval": 0.25}
    raw["api"] = {"host": "127.0.0.1", "token": token}
    raw["store"] = {"path": str(store_dir / "tradeguard.db")}
    raw["supervisor"] = {"liveness_interval": 1.0, "liveness_timeout": 0.5}
    raw["debug"] = {"fault_injection": True}
    return config_from_mapping(raw, {})


class Story:
    """The scripted incident, one method a chapter, each checking what it tells."""

    def __init__(self, system: System, market: SimMarket, guard: GuardClient,
                 narrator: Narrator) -> None:
        self.system = system
        self.market = market
        self.guard = guard
        self.n = narrator
        self.currency = system.cfg.display.currency
        self.down_at = 0.0  # time.monotonic() when the exchange went down
        self.down_for = 0.0

    def tell(self) -> None:
        self.setting()
        self.dns()
        self.open_positions()
        self.ticks_flow()
        self.feed_down()
        self.feed_back()
        self.stop_loss()
        self.emergency_close()
        self.crash()
        self.summary()

    # Reading TradeGuard -----------------------------------------------------

    def money(self, value: float, *, signed: bool = False) -> str:
        return money(value, self.currency, signed=signed)

    def websocket(self) -> dict[str, Any] | None:
        """The feed's status while connected, else None."""
        ws: dict[str, Any] = self.guard.health()["websocket"]
        return ws if ws["connected"] else None

    def prices(self, *symbols: str) -> str:
        entries = self.guard.health()["price_cache"]["cache_entries"]
        shown = []
        for symbol in symbols:
            e = entries[symbol]
            stale = ", stale" if e["is_stale"] else ""
            shown.append(f"{symbol} {self.money(e['price'])} "
                         f"({duration(e['age_seconds'])} old{stale})")
        return "   ".join(shown)

    def dns_checked(self) -> dict[str, Any] | None:
        """The DNS status once the first health check has run, else None."""
        dns: dict[str, Any] = self.guard.health()["dns"]
        return dns if dns["servers"] else None

    def closed(self, symbol: str) -> dict[str, Any] | None:
        """The symbol's position once it is closed, else None."""
        rows = [p for p in self.guard.positions() if p["symbol"] == symbol]
        return rows[-1] if rows and rows[-1]["state"] == "closed" else None

    def ticks(self) -> float:
        return self.guard.metric("tradeguard_feed_ticks_total")

    def more_ticks(self, count: int) -> None:
        start = self.ticks()
        self.n.until(lambda: self.ticks() >= start + count, WAIT, f"{count} more ticks")

    def alerted(self, kind: str, count: int = 1) -> bool:
        return self.n.alerts[kind] >= count

    # The chapters ------------------------------------------------------------

    def setting(self) -> None:
        m = self.market
        self.n.step("Setting up, all on 127.0.0.1")
        self.n.say(
            f"exchange     {m.feed_url}: {', '.join(m.symbols)} moving at random\n"
            f"DNS server   {m.dns_address}, TradeGuard's fallback; it knows {m.feed_host}\n"
            f"broker       paper: fills at the freshest price TradeGuard has\n"
            f"store        {self.system.cfg.store.path}\n"
            f"TradeGuard   API and status page at {self.guard.base_url}/, "
            f"every actor supervised"
        )

    def dns(self) -> None:
        n, host = self.n, self.market.feed_host
        n.step("1. DNS: the system resolver fails, the fallback server answers")
        n.say(f"TradeGuard looks up {host}. No system resolver knows a .test name.")
        ws = n.until(self.websocket, WAIT, "the first feed connection")
        dns = n.until(self.dns_checked, WAIT, "the first DNS health check")
        if not ws["resolved_via"].startswith("fallback:"):
            raise TradeGuardError(f"{host} resolved via {ws['resolved_via']}, not the fallback")
        n.until(lambda: self.alerted("dns_down"), WAIT, "the system DNS alert")
        server = dns["servers"].get(self.market.dns_address, {})
        n.say(f"Connected to the feed at {ws['connected_ip']} "
              f"(resolved_via {ws['resolved_via']}).\n"
              f"DNS health check: system resolver down, fallback {self.market.dns_address} "
              f"{'up' if server.get('ok') else 'down'}.")

    def open_positions(self) -> None:
        self.n.step("2. Two positions opened through the API")
        for body in (LONG, SHORT):
            status, answer = self.guard.call("POST", "/api/v1/positions", body)
            if status != 201:
                raise TradeGuardError(f"opening {body['symbol']}: {status} {answer}")
            self.n.say(f"POST /api/v1/positions -> {status} {answer['state']}: "
                       f"{answer['side']} {answer['symbol']} x{answer['quantity']:g} at "
                       f"{self.money(answer['entry_price'])}, "
                       f"stop-loss {self.money(answer['stop_loss'])}, "
                       f"take-profit {self.money(answer['take_profit'])}")

    def ticks_flow(self) -> None:
        self.n.step("3. Ticks flow")
        self.more_ticks(20)
        self.n.say(self.prices(*PRICES))
        self.n.say(f"{self.ticks():.0f} ticks so far; every BOSCHLTD and INFY tick is checked "
                   "against\nits position's stop-loss and take-profit as it arrives.")

    def feed_down(self) -> None:
        n, watched = self.n, (LONG["symbol"], SHORT["symbol"])
        n.step("4. The feed goes down")
        down_at = time.monotonic()
        self.market.feed_down()
        n.say("The exchange stops: its connection closes, new ones are refused.")
        n.until(lambda: self.websocket() is None, WAIT, "TradeGuard noticing the outage")
        n.say("TradeGuard reconnects with backoff; meanwhile the monitor checks both "
              "positions\non cached prices every "
              f"{self.system.cfg.monitor.sweep_interval:g}s, and says how old they are:")
        for mark in (2.0, 4.0, OUTAGE):
            n.pause(down_at + mark - time.monotonic())
            attempts = self.guard.health()["websocket"]["reconnect_attempts"]
            n.say(f"down {mark:.0f}s  {self.prices(*watched)}   {attempts} reconnect attempts")
        stale = self.guard.health()["positions"]["stale"]
        if set(stale) != set(watched):
            raise TradeGuardError(f"stale positions {stale}, expected {list(watched)}")
        n.until(lambda: self.alerted("price_stale", 2) and self.alerted("feed_lost"), WAIT,
                "the feed-lost and stale-price alerts")
        n.say(f"Older than {STALE_AFTER:g}s a price is stale: still used for the stops, "
              "logged with its age,\nalerted once. "
              f"Older than {self.system.cfg.prices.cache_timeout:g}s the position would be "
              "blind:\na critical alert, repeated until a price comes.")
        self.down_at = down_at

    def feed_back(self) -> None:
        n = self.n
        n.step("5. The feed comes back")
        cache = self.guard.health()["price_cache"]["cache_entries"]
        self.market.feed_up({symbol: entry["price"] for symbol, entry in cache.items()})
        n.say("The exchange is up again on the same address; prices resume where they were.")
        ws = n.until(self.websocket, WAIT, "the reconnect")
        self.down_for = time.monotonic() - self.down_at
        n.until(lambda: self.alerted("feed_restored"), WAIT, "the feed-restored alert")
        n.say(f"TradeGuard reconnected after {duration(self.down_for)} down and "
              f"{ws['reconnect_attempts']} attempts, again via {ws['resolved_via']}.")
        n.until(lambda: not self.guard.health()["positions"]["stale"], WAIT, "fresh prices")
        self.more_ticks(6)
        n.say(f"Fresh again: {self.prices(LONG['symbol'], SHORT['symbol'])}")

    def stop_loss(self) -> None:
        n, symbol = self.n, str(LONG["symbol"])
        n.step(f"6. {symbol} falls through its stop-loss at {self.money(LONG['stop_loss'])}")
        for price in SLIDE[:-1]:
            self.market.push(symbol, price)
            n.pause(0.4)
        sent_at = time.time()
        self.market.push(symbol, SLIDE[-1])
        n.say("The exchange sends " + ", ".join(self.money(p) for p in SLIDE) + ".")
        closed = n.until(lambda: self.closed(symbol), WAIT, f"{symbol}'s stop-loss close")
        n.until(lambda: self.alerted("position_closed"), WAIT, "the position-closed alert")
        took_ms = max(0.0, closed["closed_at"] - sent_at) * 1000
        n.say(f"TradeGuard closed it {took_ms:.0f} ms after that tick left the exchange:\n"
              f"sold {closed['quantity']:g} at {self.money(closed['exit_price'])} "
              f"({closed['reason']}), P&L {self.money(closed['pnl'], signed=True)}.")
        self.more_ticks(6)
        status, answer = self.guard.call("POST", EMERGENCY, {"symbol": symbol})
        closes = self.guard.metric("tradeguard_position_closes_total", reason="stop_loss",
                                   result="ok")
        orders = self.broker_orders(closed["client_order_id"])
        n.say(f"More ticks below the stop change nothing: {closes:g} stop-loss close,\n"
              f"{orders} broker order (client order id {closed['client_order_id']}).\n"
              f"A second close by hand is refused: {status} ({answer['error']}).")
        if closes != 1 or orders != 1 or status != 404:
            raise TradeGuardError(f"{symbol} closed {closes:g} times with {orders} orders")

    def broker_orders(self, client_order_id: str) -> int:
        """Orders the paper broker filled under this client order id."""
        broker = self.system.services.broker
        assert isinstance(broker, PaperBroker), "the demo runs on the paper broker"
        return broker.orders.count(client_order_id)

    def emergency_close(self) -> None:
        n, symbol = self.n, str(SHORT["symbol"])
        n.step(f"7. Closing {symbol} by hand, as an operator would")
        n.say(f"curl -X POST -H \"Authorization: Bearer $TOKEN\" "
              f"-H 'Content-Type: application/json' \\\n"
              f"     -d '{{\"symbol\": \"{symbol}\", \"reason\": \"emergency\"}}' "
              f"{self.guard.base_url}{EMERGENCY}")
        body = {"symbol": symbol, "reason": "emergency"}
        status, answer = self.guard.call("POST", EMERGENCY, body, auth=False)
        n.say(f"Without the token: {status} ({answer['error']}).")
        if status != 401:
            raise TradeGuardError(f"an emergency close without the token answered {status}")
        status, answer = self.guard.call("POST", EMERGENCY, body)
        if status != 200:
            raise TradeGuardError(f"the emergency close answered {status}: {answer}")
        n.say(f"With the token: {status}, bought back {answer['quantity']:g} at "
              f"{self.money(answer['exit_price'])} (a price "
              f"{duration(answer['price_age_seconds'])} old),\nP&L "
              f"{self.money(answer['pnl'], signed=True)}, broker order {answer['order_id']}.")
        n.until(lambda: self.alerted("position_closed", 2), WAIT, "the position-closed alert")

    def crash(self) -> None:
        n = self.n
        n.step(f"8. {CRASHED} crashes, on purpose")
        before = self.guard.health()
        restarts = before["actors"][CRASHED]["restarts"]
        status, _ = self.guard.call("POST", "/api/v1/debug/fault",
                                    {"actor": CRASHED, "kind": "crash"})
        crashed_at = time.monotonic()
        n.say(f"POST /api/v1/debug/fault {{\"actor\": \"{CRASHED}\", \"kind\": \"crash\"}} "
              f"-> {status}\n{CRASHED}, the price cache's only writer, raises in its own thread.")

        def restarted() -> bool:
            actor = self.guard.health()["actors"][CRASHED]
            return bool(actor["alive"] and actor["restarts"] > restarts)

        n.until(restarted, WAIT, f"the restart of {CRASHED}")
        took = time.monotonic() - crashed_at
        n.until(lambda: self.alerted("actor_restarted"), WAIT, "the actor-restarted alert")
        self.more_ticks(6)
        cached = self.guard.health()["price_cache"]["cached_symbols"]
        n.say(f"The supervisor restarted it within {duration(took)}; "
              f"{cached} of {before['price_cache']['cached_symbols']} cached prices kept,\n"
              "ticks flowing again.")
        if cached != before["price_cache"]["cached_symbols"]:
            raise TradeGuardError(f"cached prices after the restart: {cached}")

    def summary(self) -> None:
        n = self.n
        n.step("Summary")
        positions = self.guard.positions()
        closed = [p for p in positions if p["state"] == "closed"]
        lines = [f"Positions:         {len(positions)} opened, {len(closed)} closed, "
                 f"{len(positions) - len(closed)} open"]
        for p in positions:
            lines.append(f"  {p['symbol']:<9} {p['side']:<5} {p['quantity']:>3g} at "
                         f"{self.money(p['entry_price'])} -> {self.money(p['exit_price'])}  "
                         f"{p['reason']:<10} P&L {self.money(p['pnl'], signed=True)}")
        total = sum(p["pnl"] for p in closed)
        health = self.guard.health()
        restarts = {a: s["restarts"] for a, s in health["actors"].items() if s["restarts"]}
        fallbacks = self.guard.metric("tradeguard_dns_resolutions_total", via="fallback",
                                      result="ok")
        stop_losses = self.guard.metric("tradeguard_position_closes_total", reason="stop_loss",
                                        result="ok")
        lines += [
            f"Realised P&L:      {self.money(total, signed=True)}",
            f"Stop-loss closes:  {stop_losses:g} ({LONG['symbol']}, one broker order)",
            f"Feed reconnects:   {self.market.exchange.accepted - 1} "
            f"(down {duration(self.down_for)})",
            f"DNS fallbacks:     {fallbacks:g} (system DNS failed for {self.market.feed_host}; "
            f"fallback {self.market.dns_address} answered)",
            f"Actor restarts:    {sum(restarts.values())} "
            f"({', '.join(f'{a} x{c}' for a, c in restarts.items())})",
            f"Alerts:            {sum(n.alerts.values())} "
            f"({', '.join(f'{k} {c}' for k, c in n.alerts.items())})",
        ]
        n.say("\n".join(lines))


# Running it -------------------------------------------------------------------


def run_demo(keep_running: bool = False, broker: str = "") -> int:
    """Tell the story; with `keep_running`, leave the API and status page up until Ctrl-C.
    `broker` "kite" tells it against the Kite stand-in (tradeguard/tools/demo_kite.py)."""
    _tolerant_stdout()
    if (refusal := _refusal(broker, keep_running)) is not None:
        print(f"tradeguard demo: {refusal}", file=sys.stderr, flush=True)
        return EX_CONFIG
    quotes = LogQuotes(QUOTED)
    try:
        with _sigterm_interrupts(), tempfile.TemporaryDirectory(prefix="tradeguard-demo-") as tmp:
            store_dir = Path(tmp)
            with _demo_logging(store_dir / "tradeguard.log", quotes):
                if broker == "kite":
                    return run_kite(store_dir, quotes, time.monotonic())
                return _run(store_dir, quotes, keep_running)
    except KeyboardInterrupt:
        print("\nInterrupted: TradeGuard and the simulated exchange are stopped.", flush=True)
        return EX_INTERRUPTED


def _refusal(broker: str, keep_running: bool) -> str | None:
    """Why the demo cannot tell the story asked for, or None if it can."""
    if broker in ("", "paper"):
        return None
    if broker != "kite":
        return f"--broker {broker}: there is no {broker} stand-in yet (kite is the one there is)"
    if missing := kite_ready():
        return (f"--broker kite: this build of TradeGuard has no Kite support wired in yet "
                f"({missing} missing), so there is nothing to show against the stand-in")
    if keep_running:
        return "--broker kite does not take --keep-running yet"
    return None


def _run(store_dir: Path, quotes: LogQuotes, keep_running: bool) -> int:
    started = time.monotonic()
    print("TradeGuard demo: the real service against a simulated exchange on this machine,\n"
          "with the network failing on purpose. It takes about 15 seconds.", flush=True)
    with ExitStack() as stack:
        try:
            market = SimMarket(PRICES, seed=SEED).start()
            stack.callback(_uninterrupted, market.stop)
            system = System(demo_config(market, store_dir, secrets.token_urlsafe(24)), api_port=0)
            stack.callback(_uninterrupted, system.stop)
            system.start()
            _wait_up(system)
            guard = GuardClient(f"http://127.0.0.1:{system.api_port}",
                                system.api_token)
            narrator = Narrator(guard, quotes, once=QUOTED_ONCE, started=started)
            Story(system, market, guard, narrator).tell()
        except TradeGuardError as exc:
            _report_failure(exc, store_dir / "tradeguard.log")
            return EX_SOFTWARE
        if keep_running:
            _serve(narrator, store_dir)
        else:
            print(f"\nDone in {duration(narrator.elapsed())}: every step happened as told.",
                  flush=True)
    return EX_OK


def _report_failure(exc: TradeGuardError, log: Path) -> None:
    """Say what did not happen, with the end of TradeGuard's log (the temp dir goes away)."""
    tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_TAIL:]
    print(f"\nDEMO FAILED: {exc}\nThe last lines of TradeGuard's log:", file=sys.stderr)
    print("\n".join(tail), file=sys.stderr, flush=True)


def _wait_up(system: System) -> None:
    if not system.wait_started(WAIT):
        raise TradeGuardError(f"TradeGuard did not start: {system.supervisor.status()}")


def _serve(narrator: Narrator, store_dir: Path) -> None:
    """Keep everything up, printing what TradeGuard says, until Ctrl-C or SIGTERM."""
    url, token = narrator.guard.base_url, narrator.guard.token
    print(f"\nTradeGuard keeps running (Ctrl-C to stop).\n"
          f"  status page  {url}/\n"
          f"  API token    {token}\n"
          f"  log          {store_dir / 'tradeguard.log'}\n"
          f"  try          curl -s {url}/api/v1/monitoring/connection-health\n"
          f"               curl -s -X POST -H 'Authorization: Bearer {token}' "
          f"-H 'Content-Type: application/json' \\\n"
          f"                 -d '{{\"symbol\": \"RELIANCE\", \"side\": \"long\", "
          f"\"quantity\": 1, \"entry_price\": 2950, \"stop_loss\": 2900}}' "
          f"{url}/api/v1/positions\n"
          f"New alerts and log lines appear below.", flush=True)
    narrator.poll = 1.0
    try:
        narrator.until(lambda: False, math.inf, "Ctrl-C")
    except KeyboardInterrupt:
        print("\nStopping.", flush=True)


def _uninterrupted(stop: Callable[[], None]) -> None:
    """Run a stop function with Ctrl-C held off, so a second Ctrl-C cannot half-stop it."""
    if threading.current_thread() is not threading.main_thread():
        stop()
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        stop()
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM ends the demo as Ctrl-C does: everything stopped, the temp dir removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _demo_logging(path: Path, quotes: LogQuotes) -> Iterator[None]:
    """The log goes to a file, so the terminal shows the story only."""
    root = logging.getLogger()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    noisy = [logging.getLogger(name) for name in ("pykka", "waitress", "websockets")]
    levels = [root.level] + [lg.level for lg in noisy]
    root.addHandler(handler)
    root.addHandler(quotes)
    root.setLevel(logging.INFO)
    for lg in noisy:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.removeHandler(quotes)
        root.removeHandler(handler)
        handler.close()
        for lg, level in zip([root, *noisy], levels, strict=True):
            lg.setLevel(level)


def _tolerant_stdout() -> None:
    # A pipe or a C locale must not turn a currency sign into a crash.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="replace")
