from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tradeguard import alerts
from tradeguard.errors import NotifyError
from tradeguard.notify.outbox import OutboxAlerts
from tradeguard.notify.policy import DeliveryPolicy
from tradeguard.notify.telegram import (
    MAX_RETRY_AFTER,
    TelegramRefused,
    TelegramRetryAfter,
    TelegramTransport,
)
from tradeguard.sim.telegram_server import TelegramServer
from tradeguard.store import KEEP_FAILED_ALERTS, Store

TOKEN = "123456789:AAH-secret_TOKEN-do-not-log"
CHAT = "-100200300"


@pytest.fixture
def server() -> Iterator[TelegramServer]:
    with TelegramServer(TOKEN) as server:
        yield server


@pytest.fixture
def transport(server: TelegramServer) -> TelegramTransport:
    return TelegramTransport(server.api_base, TOKEN, CHAT, timeout=2.0)


def test_delivers_messages_in_order(server: TelegramServer, transport: TelegramTransport) -> None:
    texts = ["first", "second\nwith a line", "third ₹575.00"]
    for text in texts:
        transport.send(text)
    assert server.wait_for(3, timeout=2.0)
    assert server.messages == [(CHAT, t) for t in texts]


def test_overlong_text_is_cut_to_telegrams_limit(
    server: TelegramServer, transport: TelegramTransport
) -> None:
    transport.send("x" * 5000)
    assert server.messages == [(CHAT, "x" * 4096)]


def test_server_error_is_a_retryable_notify_error(
    server: TelegramServer, transport: TelegramTransport
) -> None:
    server.fail_next(1, status=500)
    with pytest.raises(NotifyError, match="answered 500") as caught:
        transport.send("lost?")
    assert not caught.value.permanent
    transport.send("not lost")
    assert server.messages == [(CHAT, "not lost")]


def test_a_hanging_telegram_times_out_promptly(server: TelegramServer) -> None:
    server.hang(30.0)
    transport = TelegramTransport(server.api_base, TOKEN, CHAT, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(NotifyError, match="unreachable: TimeoutError") as caught:
        transport.send("hello")
    assert time.monotonic() - started < 2.0
    assert not caught.value.permanent


def test_rate_limit_carries_telegrams_retry_after(
    server: TelegramServer, transport: TelegramTransport
) -> None:
    server.rate_limit_next(1, retry_after=7)
    with pytest.raises(TelegramRetryAfter) as caught:
        transport.send("too fast")
    assert caught.value.retry_after == 7.0
    assert isinstance(caught.value, NotifyError)
    assert server.messages == []


@pytest.mark.parametrize("retry_after", [1e9, 10**12, 301])
def test_C2_telegrams_retry_after_is_capped(
    server: TelegramServer, transport: TelegramTransport, retry_after: float
) -> None:
    """C2: a relay's (or a bug's) 429 with retry_after 1e9 must not silence every
    alert until the process restarts: the wait is capped."""
    server.rate_limit_next(1, retry_after=retry_after)
    with pytest.raises(TelegramRetryAfter) as caught:
        transport.send("too fast")
    assert caught.value.retry_after == MAX_RETRY_AFTER == 300.0


@pytest.mark.parametrize("retry_after", [-5, "soon", None, True, 10**400],
                         ids=["negative", "text", "null", "bool", "huge-int"])
def test_C2_a_nonsensical_retry_after_is_a_transient_failure(
    server: TelegramServer, transport: TelegramTransport, retry_after: object
) -> None:
    """C2: a wait that means nothing (negative, not a number, too big for a float)
    is an ordinary failure, retried on the notifier's own backoff."""
    server.rate_limit_next(1, retry_after=retry_after)
    with pytest.raises(NotifyError, match="answered 429") as caught:
        transport.send("too fast")
    assert not isinstance(caught.value, TelegramRetryAfter)
    assert not caught.value.permanent


def test_wrong_token_is_permanent_but_not_a_refusal(server: TelegramServer) -> None:
    # The whole bot is misconfigured: alerts stay queued for the token to be fixed.
    transport = TelegramTransport(server.api_base, "987:wrong-token", CHAT, timeout=2.0)
    with pytest.raises(NotifyError, match=r"401: Unauthorized \(check telegram.bot_token\)") as c:
        transport.send("hello")
    assert c.value.permanent
    assert not isinstance(c.value, TelegramRefused)


def test_missing_chat_is_refused(server: TelegramServer) -> None:
    transport = TelegramTransport(server.api_base, TOKEN, "", timeout=2.0)
    with pytest.raises(TelegramRefused, match="400: Bad Request: chat_id is empty") as caught:
        transport.send("hello")
    assert caught.value.permanent


def test_an_unknown_chat_and_a_blocked_bot_are_refused() -> None:
    with TelegramServer(TOKEN, chat_id=CHAT) as server:
        wrong = TelegramTransport(server.api_base, TOKEN, "-999", timeout=2.0)
        with pytest.raises(TelegramRefused, match="400: Bad Request: chat not found"):
            wrong.send("hello")
        server.fail_next(1, status=403, description="Forbidden: bot was blocked by the user")
        with pytest.raises(TelegramRefused, match="403: Forbidden: bot was blocked"):
            TelegramTransport(server.api_base, TOKEN, CHAT, timeout=2.0).send("hello")


def test_the_connection_is_kept_alive_and_reused(
    server: TelegramServer, transport: TelegramTransport
) -> None:
    """SPEC §4 "Network": one connection for a burst of alerts, not one each."""
    for n in range(5):
        transport.send(f"alert {n}")
    assert len(server.messages) == 5
    assert server.connections == 1
    transport.close()
    transport.send("after close")  # a fresh connection, opened on demand
    assert server.connections == 2


def test_C7_a_request_http_client_cannot_encode_is_a_notify_error(
    server: TelegramServer,
) -> None:
    """C7: a non-ASCII api_base path makes http.client raise UnicodeEncodeError, which
    used to escape send() and kill the notifier's sender thread."""
    transport = TelegramTransport(server.api_base + "/relé", TOKEN, CHAT, timeout=2.0)
    with pytest.raises(NotifyError, match="unreachable: UnicodeEncodeError"):
        transport.send("hello")


def test_refused_connection_is_a_notify_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed at once: nothing listens there
    transport = TelegramTransport(f"http://127.0.0.1:{port}", TOKEN, CHAT, timeout=2.0)
    with pytest.raises(NotifyError, match="unreachable: ConnectionRefusedError"):
        transport.send("hello")


class _NotTelegram(BaseHTTPRequestHandler):
    """A proxy error page where Telegram's JSON should be."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        page = b"<html><body>Bad Gateway</body></html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def not_telegram() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _NotTelegram)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_an_answer_that_is_not_telegrams_json_is_retryable(not_telegram: str) -> None:
    transport = TelegramTransport(not_telegram, TOKEN, CHAT, timeout=2.0)
    with pytest.raises(NotifyError, match="answered 200: <html>") as caught:
        transport.send("hello")
    assert not caught.value.permanent


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def test_the_token_never_shows(
    server: TelegramServer, not_telegram: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    odd_token = "42:tok en/with?odd#chars"  # must be quoted into the path, and still hidden
    with TelegramServer(odd_token) as odd:
        TelegramTransport(odd.api_base, odd_token, CHAT, timeout=2.0).send("odd token works")
        assert odd.messages == [(CHAT, "odd token works")]

    good = TelegramTransport(server.api_base, TOKEN, CHAT, timeout=0.3)
    cases: list[tuple[TelegramTransport, Callable[[], None]]] = [
        (good, lambda: server.fail_next(1, status=502)),
        (good, lambda: server.rate_limit_next(1, retry_after=3)),
        (TelegramTransport(server.api_base, TOKEN, "", timeout=2.0), lambda: None),
        (TelegramTransport(not_telegram, TOKEN, CHAT, timeout=2.0), lambda: None),
        (TelegramTransport("http://127.0.0.1:1", TOKEN, CHAT, timeout=2.0), lambda: None),
        # http.client quotes the whole path, token included, when it rejects one
        (TelegramTransport(server.api_base + "/a b", TOKEN, CHAT, timeout=2.0), lambda: None),
        (TelegramTransport(server.api_base, odd_token, CHAT, timeout=2.0), lambda: None),
        (good, lambda: server.hang(30.0)),  # last: the server holds requests from now on
    ]
    texts = [repr(good)]
    for transport, fault in cases:
        fault()
        with pytest.raises(NotifyError) as caught:
            transport.send("hello")
        texts += [f"{e!s} {e!r}" for e in _chain(caught.value)]
        logging.getLogger("test").exception("as the notifier would log it", exc_info=caught.value)
    texts.append(caplog.text)
    for secret in (TOKEN, odd_token, "secret_TOKEN", "tok%20en"):
        assert all(secret not in text for text in texts), secret


# Policy + transport + store together, the way the notifier drives them -------


def deliver(
    store: Store, policy: DeliveryPolicy, transport: TelegramTransport, now: float
) -> float | None:
    """One notifier round: plan, send in order until a failure, record; when to look again."""
    while True:
        plan = policy.plan(store.pending_alerts(), now)
        store.mark_sent(plan.duplicates, now)
        for message in plan.messages:
            try:
                transport.send(message.text)
            except NotifyError as exc:
                store.count_attempt(message.entry_ids)
                policy.failed(now, exc.retry_after if isinstance(exc, TelegramRetryAfter) else None)
                break
            store.mark_sent(message.entry_ids, now)
            policy.delivered(message, now)
        if not plan.messages:
            return plan.retry_at


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "tg.db")
    yield store
    store.close()


def test_a_burst_of_fifty_fits_the_budget_and_nothing_is_lost(
    server: TelegramServer, transport: TelegramTransport, store: Store
) -> None:
    now = 1000.0
    sink = OutboxAlerts(store, clock=lambda: now)
    blind = alerts.position_blind("SYM20", 575.0, 400.0, "alert")
    for i in range(50):
        sink.alert(blind if i == 20 else alerts.price_stale(f"SYM{i}", 100.0 + i, 45.0))
    policy = DeliveryPolicy(max_per_minute=5)

    retry_at = deliver(store, policy, transport, now)

    assert retry_at is None
    sent = [text for _, text in server.messages]
    assert len(sent) == 5
    assert sent[:3] == [alerts.price_stale(f"SYM{i}", 100.0 + i, 45.0).text for i in range(3)]
    digests = [t for t in sent if t.startswith("46 more alerts:")]
    assert len(digests) == 1
    assert "SYM3: price stale" in digests[0]
    assert blind.text in sent  # verbatim, its own message, not in the digest
    assert "SYM20" not in digests[0]
    assert store.pending_count() == 0
    assert all(row.sent_at == now for row in store.recent_alerts(100))


def test_failures_are_retried_after_backoff_and_retry_after(
    server: TelegramServer, transport: TelegramTransport, store: Store
) -> None:
    now = 1000.0
    sink = OutboxAlerts(store, clock=lambda: now)
    sink.alert(alerts.dns_down("timeout"))
    sink.alert(alerts.feed_lost("feed.example.com", "refused"))
    policy = DeliveryPolicy(max_per_minute=5, backoff_initial=1.0)

    server.fail_next(1, status=503)
    assert deliver(store, policy, transport, now) == now + 1.0
    assert server.messages == []
    assert [r.attempts for r in store.pending_alerts()] == [1, 0]

    server.rate_limit_next(1, retry_after=9)
    assert deliver(store, policy, transport, now + 1.0) == now + 10.0
    assert deliver(store, policy, transport, now + 9.0) == now + 10.0  # too early: nothing sent
    assert server.requests == 2

    assert deliver(store, policy, transport, now + 10.0) is None
    assert [t.split("\n")[0] for _, t in server.messages] == [
        "System DNS down", "Price feed lost: feed.example.com"
    ]
    sink.alert(alerts.dns_down("timeout"))  # the same text again, within the dedupe window
    assert deliver(store, policy, transport, now + 20.0) is None
    assert len(server.messages) == 2
    assert store.pending_count() == 0


def test_C3_pending_alerts_are_bounded_even_when_all_are_critical(store: Store) -> None:
    """C3: every pending critical was loaded on every flush, under the store lock."""
    for i in range(500):
        store.enqueue_alert("position_blind", "critical", f"blind {i}", float(i))
    store.enqueue_alert("feed_lost", "warning", "lost", 600.0)
    pending = store.pending_alerts(100)
    assert [e.text for e in pending] == [f"blind {i}" for i in range(100)]
    assert store.pending_count() == 501


def test_C3_refused_alerts_leave_the_queue_and_their_record_is_pruned(store: Store) -> None:
    """C3: a refused alert stayed pending for good; now it moves to a bounded record."""
    ids = [store.enqueue_alert("k", "warning", f"a{n}", float(n))
           for n in range(KEEP_FAILED_ALERTS + 5)]
    store.count_attempt(ids[:1])
    error = "Telegram answered 400: Bad Request: chat not found"
    assert store.mark_failed(ids[:-2], error, now=7.0) == len(ids) - 2
    assert store.mark_failed(ids[:1], error, now=8.0) == 0  # already out of the queue
    assert [e.id for e in store.pending_alerts()] == ids[-2:]
    assert store.pending_count() == 2
    failed = store.failed_alerts(limit=1000)
    assert len(failed) == KEEP_FAILED_ALERTS
    assert [e.id for e, _ in failed] == list(reversed(ids[-2 - KEEP_FAILED_ALERTS:-2]))
    assert {reason for _, reason in failed} == {error}
    oldest_kept = store.failed_alerts(limit=1000)[-1][0]
    assert oldest_kept.attempts == 1  # the refused attempt itself is counted
