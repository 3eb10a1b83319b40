"""NotifierActor: delivers the alert outbox to Telegram, in order, through an outage.

Alerts are written to the store's outbox (and the log) by whoever raises them,
before this actor is woken, so nothing is lost if it is down. On each wake-up
(`Kick`, or its own timer for retries) it asks the `DeliveryPolicy` what to
send now; one sender thread it owns does the HTTP work and reports back, and
only then are the entries marked sent. With no bot token the log is the only
sink and entries are marked sent at once.
"""

from __future__ import annotations

import logging
import threading
import time

from actors.base import GuardActor
from actors.messages import Kick, Timer, WorkerDone
from tradeguard.errors import NotifyError
from tradeguard.notify.policy import Message
from tradeguard.notify.telegram import TelegramRetryAfter, TelegramTransport

logger = logging.getLogger(__name__)

FLUSH_EVERY = 1.0
BATCH = 100
SEND_TIMEOUT = 10.0  # seconds one sendMessage may take before it counts as failed


class NotifierActor(GuardActor):
    def setup(self) -> None:
        tg = self.services.cfg.telegram
        self._transport: TelegramTransport | None = None
        if tg.bot_token:
            self._transport = TelegramTransport(
                tg.api_base, tg.bot_token, tg.chat_id, timeout=SEND_TIMEOUT,
                resolver=self.services.resolver,
            )
        self._sender: threading.Thread | None = None
        self._retry_at: float | None = None
        self.every("flush", FLUSH_EVERY)
        self._flush()

    def teardown(self) -> None:
        sender = getattr(self, "_sender", None)
        if sender is not None:
            sender.join(SEND_TIMEOUT + 1.0)

    def handle(self, message: object) -> object:
        if isinstance(message, Kick):
            self._flush()
        elif isinstance(message, Timer):
            if self._retry_at is not None and time.time() >= self._retry_at:
                self._flush()
        elif isinstance(message, WorkerDone):
            self._sender = None
            assert isinstance(message.result, list)
            self._record(message.result)
            self._flush()
        else:
            return super().handle(message)
        return None

    def _flush(self) -> None:
        if self._sender is not None:
            return  # the sender reports back and we look again then
        store = self.services.store
        pending = store.pending_alerts(BATCH)
        now = time.time()
        if self._transport is None:
            if pending:
                store.mark_sent([e.id for e in pending], now)
                self.services.metrics.notifications.labels(result="logged").inc(len(pending))
            self._retry_at = None
            return
        plan = self.services.delivery.plan(pending, now)
        if plan.duplicates:
            store.mark_sent(plan.duplicates, now)
            self.services.metrics.notifications.labels(result="duplicate").inc(
                len(plan.duplicates))
        self._retry_at = plan.retry_at
        if plan.messages:
            self._start_sender(list(plan.messages))

    def _start_sender(self, messages: list[Message]) -> None:
        transport, stop = self._transport, self.ctx.stop_event
        assert transport is not None

        def send_all() -> None:
            outcomes: list[tuple[Message, float | None, str | None]] = []
            # A permanent refusal (bad token, unknown chat) is retried like any other
            # failure, so the outbox keeps the alerts; it is logged as an error.
            for message in messages:
                if stop.is_set():
                    break
                try:
                    transport.send(message.text)
                except TelegramRetryAfter as exc:
                    outcomes.append((message, exc.retry_after, str(exc)))
                    break
                except NotifyError as exc:
                    if exc.permanent:
                        logger.error("[NOTIFY] Telegram refused the message; check "
                                     "telegram.bot_token and chat_id: %s", exc)
                    outcomes.append((message, None, str(exc)))
                    break
                outcomes.append((message, None, None))
            self.post(WorkerDone("send", result=outcomes))

        self._sender = threading.Thread(target=send_all, name="notifier-send", daemon=True)
        self._sender.start()

    def _record(self, outcomes: list[tuple[Message, float | None, str | None]]) -> None:
        policy, store, counter = (self.services.delivery, self.services.store,
                                  self.services.metrics.notifications)
        for message, retry_after, error in outcomes:
            now = time.time()
            if error is None:
                policy.delivered(message, now)
                store.mark_sent(message.entry_ids, now)
                counter.labels(result="sent").inc()
                continue
            policy.failed(now, retry_after)
            store.count_attempt(message.entry_ids)
            counter.labels(result="retry_after" if retry_after is not None else "error").inc()
            logger.warning("[NOTIFY] Telegram delivery failed, will retry: %s", error)
