"""What TradeGuard tells the operator: the alert catalogue and the sink it goes to.

Every text is written to be read on a phone: the first line is a headline
that stands alone (digests of a flood list only headlines), then what
happened with the numbers that matter, what TradeGuard did, and what the
operator can do. Texts are plain (no markup), so Telegram shows them as is.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Protocol

logger = logging.getLogger(__name__)

MAX_ERROR_CHARS = 200
CLOSE_BY_HAND = "You can: close it by hand (POST /api/v1/monitoring/emergency-close-position)."


class Severity(enum.Enum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


LOG_LEVELS = {
    Severity.INFO: logging.INFO,
    Severity.WARNING: logging.WARNING,
    Severity.CRITICAL: logging.CRITICAL,
}


@dataclass(frozen=True)
class Alert:
    kind: str
    severity: Severity
    text: str


@dataclass(frozen=True)
class OutboxEntry:
    """An alert as the store's outbox holds it, waiting for (or past) delivery."""

    id: int
    created_at: float
    kind: str
    severity: str
    text: str
    attempts: int
    sent_at: float | None = None


def headline(text: str) -> str:
    """The first line of an alert text: what a digest shows of it."""
    return text.split("\n", 1)[0]


def _alert(kind: str, severity: Severity, *lines: str) -> Alert:
    text = "\n".join(line for line in lines if line)
    if severity is Severity.CRITICAL:
        text = "CRITICAL: " + text
    return Alert(kind, severity, text)


def duration(seconds: float) -> str:
    """A short human duration: 0.4s, 45s, 6m 12s, 2h 05m."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


def money(value: float, currency: str, *, signed: bool = False) -> str:
    sign = "-" if value < 0 else ("+" if signed else "")
    return f"{sign}{currency}{abs(value):,.2f}"


def _error(error: str) -> str:
    # Library errors can be long (a whole HTML page); a phone needs the gist.
    one_line = " ".join(error.split())
    if len(one_line) <= MAX_ERROR_CHARS:
        return one_line
    return one_line[: MAX_ERROR_CHARS - 3] + "..."


# The catalogue -------------------------------------------------------------


def feed_lost(host: str, error: str) -> Alert:
    return _alert(
        "feed_lost", Severity.WARNING,
        f"Price feed lost: {host}",
        f"Error: {_error(error)}",
        "TradeGuard is reconnecting; stops are checked on cached prices meanwhile.",
        "You can: watch connection-health; you are alerted if a position goes blind.",
    )


def feed_restored(host: str, ip: str, via: str, down_seconds: float) -> Alert:
    return _alert(
        "feed_restored", Severity.INFO,
        f"Price feed restored: {host}",
        f"Connected to {ip} (resolved via {via}) after {duration(down_seconds)} down.",
        "Live prices again; nothing to do.",
    )


def feed_token_rejected(host: str, error: str) -> Alert:
    """The feed refused the access token at the handshake (SPEC §12): one per refused token."""
    return _alert(
        "feed_token_rejected", Severity.CRITICAL,
        f"Price feed refused the access token: {host}",
        f"Error: {_error(error)}",
        "TradeGuard tries again only every feed.reconnect_max_delay, and at once when a new "
        "token arrives; stops are checked on cached prices meanwhile.",
        "You can: log in at the broker, then write the new token to broker.token_file, send "
        "SIGHUP, or POST it to /api/v1/broker/token.",
    )


def feed_token_accepted(host: str) -> Alert:
    return _alert(
        "feed_token_accepted", Severity.INFO,
        f"Price feed accepts the access token again: {host}",
        "Live prices again; nothing to do.",
    )


def dns_down(error: str) -> Alert:
    return _alert(
        "dns_down", Severity.WARNING,
        "System DNS down",
        f"Error: {_error(error)}",
        "TradeGuard resolves through its fallback DNS servers and remembered addresses.",
        "You can: check this host's resolver (resolv.conf, systemd-resolved).",
    )


def dns_back(down_seconds: float) -> Alert:
    return _alert(
        "dns_back", Severity.INFO,
        "System DNS back",
        f"It was down for {duration(down_seconds)}. Nothing to do.",
    )


def price_stale(symbol: str, price: float, age: float, currency: str = "₹") -> Alert:
    return _alert(
        "price_stale", Severity.WARNING,
        f"{symbol}: price stale",
        f"Last price {money(price, currency)}, {duration(age)} old.",
        "Stops are still checked on it; if it gets too old the position is blind"
        " and you get a critical alert.",
    )


PriceSeen = tuple[str, float | None, float | None]  # symbol, last price, its age (None: none)
MAX_LISTED = 25  # symbols named in one folded alert; a phone screen, not a report


def prices_stale(stale: list[tuple[str, float, float]], currency: str = "₹") -> Alert:
    """Many positions' prices gone stale in one sweep (the feed went dark): one alert."""
    return _alert(
        "price_stale", Severity.WARNING,
        f"{len(stale)} positions: price stale",
        "Last prices: " + _listed([_seen(s, currency) for s in stale]),
        "Stops are still checked on them; if they get too old the positions are blind"
        " and you get a critical alert.",
    )


def _seen(seen: PriceSeen, currency: str) -> str:
    symbol, price, age = seen
    if price is None or age is None:
        return f"{symbol} (no price at all)"
    return f"{symbol} ({money(price, currency)}, {duration(age)} old)"


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    more = len(items) - MAX_LISTED
    return shown + (f" and {more} more." if more > 0 else ".")


def _blind_action(policy: str, many: bool) -> tuple[str, str]:
    if policy == "close":
        return ("TradeGuard is closing " + ("them" if many else "it")
                + " at market (blind_policy = close).", "You can: check the close at your broker.")
    their = "their" if many else "its"
    return f"TradeGuard cannot check {their} stop-loss or take-profit.", CLOSE_BY_HAND


def position_blind(
    symbol: str,
    last_price: float | None,
    age: float | None,
    policy: str,
    currency: str = "₹",
) -> Alert:
    if last_price is None or age is None:
        seen = "No price received for it at all."
    else:
        seen = f"Last price {money(last_price, currency)}, {duration(age)} old: too old to use."
    action, advice = _blind_action(policy, many=False)
    return _alert(
        "position_blind", Severity.CRITICAL,
        f"{symbol}: position BLIND, no usable price", seen, action, advice,
    )


def positions_blind(seen: list[PriceSeen], policy: str, currency: str = "₹") -> Alert:
    """Positions that went blind in one sweep (a feed outage blinds them all at once)."""
    if len(seen) == 1:
        return position_blind(*seen[0], policy, currency)
    action, advice = _blind_action(policy, many=True)
    return _alert(
        "position_blind", Severity.CRITICAL,
        f"{len(seen)} positions BLIND, no usable price",
        "Last prices, too old to use: " + _listed([_seen(s, currency) for s in seen]),
        action, advice,
    )


def still_blind(symbols: list[str], policy: str) -> Alert:
    """The reminder while positions stay blind: one for all of them, once per interval.

    No ages in it: the same blind positions give the same text, so reminders
    that pile up while Telegram is slow fold into one message instead of
    crowding out every other alert (SPEC §4 "Alerts").
    """
    many = len(symbols) > 1
    action, advice = _blind_action(policy, many=many)
    subject = f"{len(symbols)} positions" if many else symbols[0] + ": position"
    return _alert(
        "position_blind", Severity.CRITICAL,
        f"{subject} still BLIND, no usable price",
        "" if not many else "Still blind: " + _listed(symbols),
        action, advice,
    )


def position_priced_again(
    symbol: str, price: float, blind_seconds: float, currency: str = "₹"
) -> Alert:
    return _alert(
        "position_priced", Severity.INFO,
        f"{symbol}: priced again",
        f"Live price {money(price, currency)} after {duration(blind_seconds)} blind.",
        "Stops are checked on every tick again; nothing to do.",
    )


def positions_priced_again(
    priced: list[tuple[str, float, float]], currency: str = "₹"
) -> Alert:
    """Blind positions priced again in one sweep (the feed is back): one alert."""
    if len(priced) == 1:
        return position_priced_again(*priced[0], currency)
    longest = max(seconds for _, _, seconds in priced)
    return _alert(
        "position_priced", Severity.INFO,
        f"{len(priced)} positions priced again",
        _listed([f"{s} {money(p, currency)}" for s, p, _ in priced]),
        f"They were blind for up to {duration(longest)}.",
        "Stops are checked on every tick again; nothing to do.",
    )


def position_closed(
    symbol: str,
    side: str,
    quantity: float,
    *,
    reason: str,
    exit_price: float,
    pnl: float,
    price_age: float | None,
    currency: str = "₹",
) -> Alert:
    # A warning, not info: money moved, and the operator should look.
    # price_age is None when the broker's fill was not priced from TradeGuard's cache.
    age = "" if price_age is None else f" (price {duration(price_age)} old)"
    return _alert(
        "position_closed", Severity.WARNING,
        f"{symbol}: position closed ({reason.replace('_', '-')})",
        f"{side.capitalize()} {quantity:g} closed at {money(exit_price, currency)}{age}.",
        f"P&L {money(pnl, currency, signed=True)}. Nothing to do.",
    )


def squared_off(symbols: list[str]) -> Alert:
    """market.square_off reached: every intraday position is being closed (one alert for all)."""
    many = len(symbols) > 1
    return _alert(
        "square_off", Severity.WARNING,
        f"Square-off: closing {len(symbols)} intraday position{'s' if many else ''}",
        "Closing " + _listed(symbols),
        "Each close is reported as it fills. Nothing to do.",
    )


def close_failed(symbol: str, attempts: int, error: str) -> Alert:
    # Not "close it at your broker": without a release TradeGuard's next retry
    # would then sell what is no longer there, a reverse position (finding A1).
    return _alert(
        "close_failed", Severity.CRITICAL,
        f"{symbol}: close FAILED after {attempts} attempts",
        f"Error: {_error(error)}",
        "The position is still open; TradeGuard keeps retrying on every sweep.",
        f"You can: close it yourself at your broker, and then POST /api/v1/positions/{symbol}"
        "/release at once, so that TradeGuard stops guarding it and sends no order of its own.",
    )


def closed_at_broker(symbol: str, side: str, quantity: float) -> Alert:
    return _alert(
        "closed_at_broker", Severity.WARNING,
        f"{symbol}: already closed at the broker",
        f"TradeGuard went to close the {side} {quantity:g}, but the broker holds none of it.",
        "No order was sent (it would have opened a reverse position); TradeGuard no longer"
        " guards it.",
        "You can: check the closing trade at your broker; its price is not known here.",
    )


def reduced_at_broker(symbol: str, guarded: float, held: float) -> Alert:
    return _alert(
        "reduced_at_broker", Severity.WARNING,
        f"{symbol}: the broker holds less than TradeGuard guarded",
        f"Guarded {guarded:g}, the broker holds {held:g}.",
        f"TradeGuard closes the {held:g} the broker holds, never more.",
        "You can: check for a partial close by hand at your broker.",
    )


def actor_restarted(actor: str, reason: str, restarts: int) -> Alert:
    return _alert(
        "actor_restarted", Severity.WARNING,
        f"{actor} restarted",
        f"Why: {_error(reason)} (restart {restarts}).",
        "Prices, positions and queued alerts were kept. Nothing to do unless it repeats.",
    )


def supervisor_gave_up(actor: str, restarts: int, window: float) -> Alert:
    return _alert(
        "supervisor_gave_up", Severity.CRITICAL,
        "TradeGuard STOPPED: positions are not watched",
        f"{actor} failed {restarts} times within {duration(window)}; the supervisor gave up.",
        "The service manager should start it again.",
        "You can: check the logs, and watch open positions at your broker until it is back.",
    )


# Sinks ----------------------------------------------------------------------


class AlertSink(Protocol):
    def alert(self, alert: Alert) -> None: ...


class QueuingSink(AlertSink, Protocol):
    def queued(self, alert: Alert) -> None:
        """An alert its caller wrote to the outbox in its own transaction: log it, wake delivery."""
        ...
