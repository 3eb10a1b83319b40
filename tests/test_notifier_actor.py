"""NotifierActor on the running service, against a real loopback Telegram stand-in.

Telegram is reached by name (telegram.tradeguard.test): the harness's system
resolver fails, so every send resolves through the fallback DNS server. Every
test first waits for the service's own start-up alert (system DNS down) to be
delivered, so the slots of the per-minute limit are known.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from actors import notifier
from tests.support.harness import TG_HOST, Harness, running
from tests.support.waiting import wait_until
from tradeguard import alerts
from tradeguard.notify.telegram import TelegramTransport


def texts(h: Harness) -> list[str]:
    assert h.telegram is not None
    return [text for _, text in h.telegram.messages]


def settled(h: Harness) -> int:
    """Wait until the start-up alert is on the phone and the outbox is empty; the count."""
    wait_until(lambda: any(t.startswith("System DNS down") for t in texts(h)), 10,
               message="the start-up alert never reached Telegram")
    wait_until(lambda: h.system.services.store.pending_count() == 0, 10)
    return len(texts(h))


def limit(h: Harness, per_minute: int) -> None:
    """telegram.max_per_minute, set on the running policy: running()'s own `telegram`
    argument shadows a [telegram] config section."""
    h.system.services.delivery.max_per_minute = per_minute


def delivered(h: Harness, alert: alerts.Alert) -> int:
    """How many messages carried this alert's exact text."""
    return sum(text == alert.text for text in texts(h))


def raise_alert(h: Harness, alert: alerts.Alert) -> None:
    h.system.services.alerts.alert(alert)


def stale(symbol: str) -> alerts.Alert:
    return alerts.price_stale(symbol, 575.0, 45.0)


def test_alerts_arrive_in_order_through_the_fallback_dns(tmp_path: Path) -> None:
    with running(tmp_path, telegram=True) as h:
        assert h.telegram is not None
        settled(h)
        # The system resolver refused the name; the fallback server's answer is what is used.
        assert h.lookup.mode == "fail" and h.lookup.calls > 0
        assert h.system.services.store.load_addresses(TG_HOST) == ["127.0.0.1"]
        batch = [stale(f"SYM{i}") for i in range(8)]
        for alert in batch:
            raise_alert(h, alert)
        wait_until(lambda: all(delivered(h, a) for a in batch), 10)
        mine = [t for t in texts(h) if t in {a.text for a in batch}]
        assert mine == [a.text for a in batch]  # in order, each once
        # SPEC §4 "Network": the connection is kept alive, so the burst needed no new one.
        assert h.telegram.connections < len(batch)


def test_500s_and_timeouts_are_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notifier, "SEND_TIMEOUT", 0.5)
    with running(tmp_path, telegram=True) as h:
        tg = h.telegram
        assert tg is not None
        settled(h)
        before = tg.requests
        tg.fail_next(2, status=500)
        first = stale("FIVEHUNDRED")
        raise_alert(h, first)
        wait_until(lambda: delivered(h, first) == 1, 15)
        assert tg.requests - before == 3  # two 500s, then the delivery

        before = tg.requests
        tg.hang(1.2)  # longer than the notifier waits for an answer
        second = stale("TIMEOUT")
        raise_alert(h, second)
        wait_until(lambda: delivered(h, second) >= 1 and tg.requests - before >= 2, 15)
        # A timed-out request may still have reached Telegram: the stand-in delivers it
        # when the hang ends, so the phone can show it twice (at least once, never lost).
        assert delivered(h, second) in (1, 2)
        wait_until(lambda: h.system.services.store.pending_count() == 0, 10)


def test_429_retry_after_is_waited_out(tmp_path: Path) -> None:
    with running(tmp_path, telegram=True) as h:
        tg = h.telegram
        assert tg is not None
        settled(h)
        before = tg.requests
        tg.rate_limit_next(1, retry_after=2)
        throttled = stale("THROTTLED")
        raise_alert(h, throttled)
        wait_until(lambda: tg.requests > before, 10)
        refused_at = time.monotonic()
        wait_until(lambda: delivered(h, throttled) == 1, 10)
        assert time.monotonic() - refused_at >= 2.0 - 0.05
        assert tg.requests - before == 2  # nothing was sent while it waited


def test_a_burst_over_the_rate_limit_becomes_a_digest(tmp_path: Path) -> None:
    with running(tmp_path, telegram=True) as h:
        tg = h.telegram
        assert tg is not None
        limit(h, 5)
        start = settled(h)
        assert start == 1  # one of the five slots is used
        tg.fail_next(1)  # the first send fails, so the whole burst is pending at the retry
        burst = [alerts.feed_lost(f"w{i:02d}.test", "test") for i in range(12)]
        for alert in burst:
            raise_alert(h, alert)
        wait_until(lambda: len(texts(h)) == start + 4, 10)
        wait_until(lambda: h.system.services.store.pending_count() == 0, 10)
        sent = texts(h)[start:]
        assert sent[:3] == [a.text for a in burst[:3]]
        digest = sent[3].split("\n")
        assert digest[0] == "9 more alerts:"
        assert digest[1:6] == [alerts.headline(a.text) for a in burst[3:8]]
        assert digest[6:] == ["...and 4 more.", "Full texts are in the TradeGuard log."]
        assert len(texts(h)) == start + 4  # the limit holds: nothing else went out


def test_duplicates_are_folded(tmp_path: Path) -> None:
    with running(tmp_path, telegram=True) as h:
        tg = h.telegram
        assert tg is not None
        start = settled(h)
        tg.fail_next(1)
        same = alerts.feed_lost("dup.test", "connection refused")
        for _ in range(3):
            raise_alert(h, same)
        first, rest = same.text.split("\n", 1)
        wait_until(lambda: len(texts(h)) > start, 10)
        assert texts(h)[start:] == [f"{first} (x3)\n{rest}"]
        raise_alert(h, same)  # delivered minutes ago: marked sent, not sent again
        wait_until(lambda: h.system.services.store.pending_count() == 0, 10)
        assert len(texts(h)) == start + 1
        registry = h.system.services.metrics.registry
        assert registry.get_sample_value("tradeguard_notifications_total",
                                         {"result": "duplicate"}) == 1


def test_a_critical_alert_is_never_lost(tmp_path: Path) -> None:
    with running(tmp_path, telegram=True) as h:
        tg = h.telegram
        assert tg is not None
        limit(h, 3)
        start = settled(h)  # two slots left
        tg.fail_next(2)
        flood = [alerts.feed_lost(f"flood{i}.test", "test") for i in range(6)]
        for alert in flood:
            raise_alert(h, alert)
        critical = alerts.position_blind("BOSCHLTD", 575.0, 310.0, "alert")
        raise_alert(h, critical)
        # The notifier dies while Telegram fails; the outbox keeps everything.
        h.system.inject_fault("NotifierActor", "crash")
        wait_until(lambda: delivered(h, critical) == 1, 15,
                   message=f"critical alert not delivered: {texts(h)[start:]}")
        sent = texts(h)[start:]
        assert len(sent) == 2  # the two free slots: a digest of the warnings and the critical
        digest = next(t for t in sent if t != critical.text)
        assert digest.split("\n")[0].endswith("more alerts:")
        assert alerts.headline(critical.text) not in digest
        assert h.system.supervisor.status()["NotifierActor"]["restarts"] >= 1


def test_full_feed_outage_as_the_phone_sees_it(tmp_path: Path) -> None:
    with running(tmp_path, telegram=True,
                 prices={"stale_warning_threshold": 1.0, "cache_timeout": 3.0}) as h:
        services = h.system.services
        start = settled(h)
        h.open_long("BOSCHLTD", 735.0, 700.0)
        wait_until(lambda: services.feed_status.connected and any(
            "BOSCHLTD" in s for s in h.exchange.subscriptions), 10)
        h.exchange.send_tick("BOSCHLTD", 740.5)
        wait_until(lambda: services.cache.quote("BOSCHLTD", time.time()) is not None, 5)

        h.exchange.stop()  # the exchange goes away entirely
        wait_until(lambda: any("position BLIND" in t for t in texts(h)), 15)
        h.exchange.restart()
        wait_until(lambda: any(t.startswith("Price feed restored") for t in texts(h)), 15)
        wait_until(lambda: any("BOSCHLTD" in s for s in h.exchange.subscriptions[-1:]), 10)
        h.exchange.send_tick("BOSCHLTD", 741.0)
        wait_until(lambda: not services.monitor_status.blind_symbols(), 10)
        wait_until(lambda: services.store.pending_count() == 0, 10)

        story = texts(h)[start:]
        print("\nWhat the operator's phone shows during a full feed outage:")
        for n, text in enumerate(story, 1):
            print(f"--- message {n} ---\n{text}")
        assert [alerts.headline(t) for t in story] == [
            "Price feed lost: feed.tradeguard.test",
            "BOSCHLTD: price stale",
            "CRITICAL: BOSCHLTD: position BLIND, no usable price",
            "Price feed restored: feed.tradeguard.test",
            "BOSCHLTD: priced again",
        ]
        assert h.position("BOSCHLTD").state.value == "open"


def pending(h: Harness) -> int:
    return h.system.services.store.pending_count()


def sample(h: Harness, name: str, **labels: str) -> float:
    value = h.system.services.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def test_C3_an_alert_telegram_refuses_is_marked_failed_and_the_rest_moves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """C3: a permanent refusal (here a 400 for a wrong chat) used to be retried forever,
    holding up every alert behind it while the outbox grew."""
    with running(tmp_path, telegram=True) as h:
        tg = h.telegram
        assert tg is not None
        settled(h)
        before = tg.requests
        tg.fail_next(1, status=400, description="Bad Request: chat not found")
        refused, after = stale("REFUSED"), stale("AFTER")
        raise_alert(h, refused)
        raise_alert(h, after)
        wait_until(lambda: delivered(h, after) == 1 and pending(h) == 0, 10)
        assert delivered(h, refused) == 0
        assert tg.requests - before == 2  # the refused one was tried once, never again
        (entry, error), = h.system.services.store.failed_alerts()
        assert entry.text == refused.text
        assert error == "Telegram answered 400: Bad Request: chat not found"
        assert sample(h, "tradeguard_notifications_total", result="failed") == 1
        lines = [r for r in caplog.records if r.levelno == logging.CRITICAL
                 and r.name == "actors.notifier"]
        assert len(lines) == 1
        assert "REFUSED: price stale" in lines[0].getMessage()


def test_C7_an_answer_the_transport_chokes_on_does_not_wedge_the_notifier(
    tmp_path: Path,
) -> None:
    """C7: a 429 whose retry_after is an integer too large for a float raised
    OverflowError in the sender thread; the thread died, `_sender` was never reset,
    and no alert was delivered again."""
    with running(tmp_path, telegram=True) as h:
        tg = h.telegram
        assert tg is not None
        settled(h)
        tg.rate_limit_next(1, retry_after=10**400)
        first = stale("CHOKED")
        raise_alert(h, first)
        wait_until(lambda: delivered(h, first) == 1, 10)
        second = stale("NEXT")
        raise_alert(h, second)
        wait_until(lambda: delivered(h, second) == 1, 10)


def test_C7_whatever_the_sender_raises_is_logged_and_the_next_round_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """C7: only NotifyError was caught; any other exception ended the sender for good.
    The fault is injected into the transport's send, once: a bug no one foresaw."""
    real_send = TelegramTransport.send
    calls: list[str] = []

    def send_with_a_bug_once(self: TelegramTransport, text: str) -> None:
        calls.append(text)
        if len(calls) == 2:  # the first is the start-up alert
            raise RuntimeError("a bug in the sender")
        real_send(self, text)

    monkeypatch.setattr(TelegramTransport, "send", send_with_a_bug_once)
    with running(tmp_path, telegram=True) as h:
        settled(h)
        alert = stale("BUGGED")
        raise_alert(h, alert)
        wait_until(lambda: delivered(h, alert) == 1 and pending(h) == 0, 10)
        assert calls.count(alert.text) == 2
        assert any("The Telegram sender failed" in r.getMessage() and r.exc_info
                   for r in caplog.records)


def test_E4_a_message_a_replaced_notifier_delivered_is_not_sent_again(tmp_path: Path) -> None:
    """E4: the notifier crashes while Telegram holds its request. The old sender's
    outcome used to travel by a post its fenced incarnation dropped, so the next
    incarnation found the alert still pending and sent it a second time."""
    with running(tmp_path, telegram=True) as h:
        tg = h.telegram
        assert tg is not None
        settled(h)
        before = tg.requests
        tg.hang(1.0)
        held = stale("INFLIGHT")
        raise_alert(h, held)
        wait_until(lambda: tg.requests > before, 5)  # at Telegram, held there
        h.system.inject_fault("NotifierActor", "crash")
        wait_until(lambda: h.system.supervisor.status()["NotifierActor"]["restarts"] >= 1
                   and h.system.supervisor.status()["NotifierActor"]["alive"], 15)
        later = stale("LATER")
        raise_alert(h, later)  # the new incarnation has looked at the outbox since
        wait_until(lambda: delivered(h, later) == 1 and pending(h) == 0, 15)
        assert delivered(h, held) == 1
