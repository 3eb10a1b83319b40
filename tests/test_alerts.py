from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tradeguard import alerts
from tradeguard.alerts import Alert, Severity
from tradeguard.notify.outbox import OutboxAlerts
from tradeguard.store import Store

CATALOGUE = [
    (alerts.feed_lost("feed.example.com", "[Errno 111] Connection refused"),
     "feed_lost", Severity.WARNING, ["feed.example.com", "Connection refused", "reconnecting"]),
    (alerts.feed_restored("feed.example.com", "203.0.113.7", "fallback:1.1.1.1", 125.0),
     "feed_restored", Severity.INFO, ["203.0.113.7", "fallback:1.1.1.1", "2m 05s"]),
    (alerts.dns_down("Temporary failure in name resolution"),
     "dns_down", Severity.WARNING, ["System DNS down", "Temporary failure", "fallback"]),
    (alerts.dns_back(42.0), "dns_back", Severity.INFO, ["System DNS back", "42s"]),
    (alerts.price_stale("BOSCHLTD", 575.0, 45.2),
     "price_stale", Severity.WARNING, ["BOSCHLTD", "₹575.00", "45s old"]),
    (alerts.position_blind("BOSCHLTD", 575.0, 372.0, "alert"),
     "position_blind", Severity.CRITICAL, ["BOSCHLTD", "₹575.00", "6m 12s old",
                                            "emergency-close-position"]),
    (alerts.position_closed("BOSCHLTD", "long", 10, reason="stop_loss", exit_price=575.0,
                            pnl=-1600.0, price_age=1.5),
     "position_closed", Severity.WARNING, ["BOSCHLTD", "stop-loss", "Long 10", "₹575.00",
                                           "1.5s old", "-₹1,600.00"]),
    (alerts.close_failed("BOSCHLTD", 3, "broker answered 503"),
     "close_failed", Severity.CRITICAL, ["BOSCHLTD", "3 attempts", "503", "at your broker"]),
    (alerts.actor_restarted("FeedActor", "liveness ping timed out", 2),
     "actor_restarted", Severity.WARNING, ["FeedActor", "liveness ping", "restart 2"]),
    (alerts.supervisor_gave_up("CacheActor", 6, 30.0),
     "supervisor_gave_up", Severity.CRITICAL, ["STOPPED", "CacheActor", "6 times", "30s"]),
]


@pytest.mark.parametrize(("alert", "kind", "severity", "needles"), CATALOGUE,
                         ids=[c[1] for c in CATALOGUE])
def test_catalogue_texts(alert: Alert, kind: str, severity: Severity, needles: list[str]) -> None:
    assert (alert.kind, alert.severity) == (kind, severity)
    for needle in needles:
        assert needle in alert.text
    assert alert.text.startswith("CRITICAL: ") == (severity is Severity.CRITICAL)
    assert len(alerts.headline(alert.text)) <= 80
    assert len(alert.text) < 500


def test_currency_is_passed_in() -> None:
    alert = alerts.price_stale("AAPL", 1234.5, 40, currency="$")
    assert "$1,234.50" in alert.text
    assert "₹" not in alert.text


def test_blind_without_any_price_and_with_close_policy() -> None:
    never = alerts.position_blind("TCS", None, None, "alert")
    assert "No price received" in never.text
    closing = alerts.position_blind("TCS", 3500.0, 400.0, "close")
    assert "closing it at market" in closing.text
    assert "emergency-close-position" not in closing.text


def test_profit_is_signed_and_an_unknown_price_age_left_out() -> None:
    alert = alerts.position_closed("INFY", "short", 2.5, reason="take_profit",
                                   exit_price=1500.0, pnl=250.0, price_age=None)
    assert "+₹250.00" in alert.text
    assert "Short 2.5 closed at ₹1,500.00." in alert.text


def test_long_errors_are_cut_to_one_short_line() -> None:
    alert = alerts.feed_lost("feed.example.com", "<html>\n" + "x" * 5000)
    error_line = alert.text.split("\n")[1]
    assert len(error_line) <= len("Error: ") + alerts.MAX_ERROR_CHARS
    assert error_line.endswith("...")


@pytest.mark.parametrize(("seconds", "text"), [
    (0.44, "0.4s"), (45.4, "45s"), (59.6, "1m 00s"), (372, "6m 12s"),
    (3600, "1h 00m"), (7500, "2h 05m"),
])
def test_duration(seconds: float, text: str) -> None:
    assert alerts.duration(seconds) == text


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "tg.db")
    yield store
    store.close()


def test_outbox_alerts_queue_durably_before_the_kick(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    seen_at_kick: list[int] = []
    sink = OutboxAlerts(store, on_enqueued=lambda: seen_at_kick.append(store.pending_count()),
                        clock=lambda: 1000.0)
    caplog.set_level(logging.DEBUG, logger="tradeguard.notify.outbox")
    sink.alert(alerts.dns_back(5.0))
    sink.alert(alerts.price_stale("BOSCHLTD", 575.0, 45.0))
    sink.alert(alerts.close_failed("BOSCHLTD", 3, "refused"))

    assert seen_at_kick == [1, 2, 3]
    rows = store.pending_alerts()
    assert [(r.kind, r.severity, r.created_at) for r in rows] == [
        ("dns_back", "info", 1000.0),
        ("price_stale", "warning", 1000.0),
        ("close_failed", "critical", 1000.0),
    ]
    assert rows[2].text == alerts.close_failed("BOSCHLTD", 3, "refused").text
    levels = [(r.levelno, r.getMessage().split(" | ")[0]) for r in caplog.records]
    assert levels == [
        (logging.INFO, "[ALERT] System DNS back"),
        (logging.WARNING, "[ALERT] BOSCHLTD: price stale"),
        (logging.CRITICAL, "[ALERT] CRITICAL: BOSCHLTD: close FAILED after 3 attempts"),
    ]
    assert all("\n" not in r.getMessage() for r in caplog.records)


def test_a_store_failure_is_logged_with_the_text_and_never_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path / "tg.db")
    store.close()  # every write now fails for real
    kicks: list[None] = []
    sink = OutboxAlerts(store, on_enqueued=lambda: kicks.append(None))
    sink.alert(alerts.close_failed("BOSCHLTD", 3, "refused"))

    assert kicks == []
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 1
    assert "not queued" in failures[0].getMessage()
    assert "BOSCHLTD: close FAILED" in failures[0].getMessage()


def test_a_failing_kick_is_logged_and_the_alert_stays_queued(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    def dead_notifier() -> None:
        raise RuntimeError("actor is dead")

    OutboxAlerts(store, on_enqueued=dead_notifier).alert(alerts.dns_down("timeout"))

    assert store.pending_count() == 1
    assert any("could not wake the notifier" in r.getMessage() for r in caplog.records)
