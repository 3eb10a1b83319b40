"""NotifierActor on the running service, against a real loopback Telegram stand-in.

Telegram is reached by name (telegram.tradeguard.test): the harness's system
resolver fails, so every send resolves through the fallback DNS server. Every
test first waits for the service's own start-up alert (system DNS down) to be
delivered, so the slots of the per-minute limit are known.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from actors import notifier
from tests.support.harness import TG_HOST, Harness, running
from tests.support.waiting import wait_until
from tradeguard import alerts


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

        # Point the name elsewhere: nothing arrives; point it back: the alert goes out.
        h.dns.set_record(TG_HOST, ["127.0.0.2"])  # nothing listens there
        moved = stale("MOVED")
        raise_alert(h, moved)
        wait_until(lambda: h.system.services.store.recent_alerts(1)[0].attempts >= 1, 10)
        assert delivered(h, moved) == 0
        h.dns.set_record(TG_HOST, ["127.0.0.1"])
        wait_until(lambda: delivered(h, moved) == 1, 10)


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
