"""NotifierActor: delivers the alert outbox to Telegram, in order, through an outage.

Alerts are written to the store's outbox (and the log) by whoever raises them,
before this actor is woken, so nothing is lost if it is down. On each wake-up
(`Kick`, or its own timer for retries) it asks the `DeliveryPolicy` what to
send now and queues the messages for the one sender thread it owns (started
again if it ever died). With no bot token the log is the only sink and
entries are marked sent at once.

The sender records every outcome itself, in the store and the policy, the
moment Telegram answers, and only then tells the actor it is done. A sender
whose incarnation was fenced meanwhile has its message dropped (`post`), but
what it delivered is already marked sent, so the next incarnation does not
send it again (E4). Senders of all incarnations take turns (the policy's
`sending` lock), and each checks that a message's alerts are still pending
before it sends: a plan made while an older sender was still out is stale.
Whatever a sender raises is logged and ends only that round (C7).
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from actors.base import GuardActor
from actors.messages import Kick, Timer, WorkerDone
from tradeguard.alerts import headline
from tradeguard.errors import NotifyError
from tradeguard.notify.policy import Message
from tradeguard.notify.telegram import TelegramRefused, TelegramRetryAfter, TelegramTransport

logger = logging.getLogger(__name__)

FLUSH_EVERY = 1.0
BATCH = 100
SEND_TIMEOUT = 10.0  # seconds one sendMessage may take before it counts as failed
TURN_POLL = 0.1  # how often a sender waiting for its turn looks at its stop event


class NotifierActor(GuardActor):
    def setup(self) -> None:
        tg = self.services.cfg.telegram
        self._transport: TelegramTransport | None = None
        if tg.bot_token:
            self._transport = TelegramTransport(
                tg.api_base, tg.bot_token, tg.chat_id, timeout=SEND_TIMEOUT,
                resolver=self.services.resolver,
            )
        self._sending = False
        self._retry_at: float | None = None  # time.monotonic()
        self._rounds: queue.SimpleQueue[list[Message]] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        self.every("flush", FLUSH_EVERY)
        self._flush()

    def teardown(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def handle(self, message: object) -> object:
        if isinstance(message, Kick):
            self._flush()
        elif isinstance(message, Timer):
            if self._retry_at is not None and time.monotonic() >= self._retry_at:
                self._flush()
        elif isinstance(message, WorkerDone):
            self._sending = False
            self._flush()
        else:
            return super().handle(message)
        return None

    def _flush(self) -> None:
        if self._sending and self._sender_alive():
            return  # the sender reports back and we look again then
        self._sending = False
        store = self.services.store
        pending = store.pending_alerts(BATCH)
        if self._transport is None:
            if pending:
                store.mark_sent([e.id for e in pending], time.time())
                self.services.metrics.notifications.labels(result="logged").inc(len(pending))
            self._retry_at = None
            return
        plan = self.services.delivery.plan(pending, time.monotonic())
        if plan.duplicates:
            store.mark_sent(plan.duplicates, time.time())
            self.services.metrics.notifications.labels(result="duplicate").inc(
                len(plan.duplicates))
        self._retry_at = plan.retry_at
        if plan.messages:
            self._sending = True
            self._ensure_sender()
            self._rounds.put(list(plan.messages))

    def _sender_alive(self) -> bool:
        return self._sender is not None and self._sender.is_alive()

    def _ensure_sender(self) -> None:
        if self._sender_alive():
            return
        if self._sender is not None:
            logger.error("[NOTIFY] The Telegram sender thread had died; starting a new one")
        self._sender = self.own_thread(self._sender_loop, "notifier-send",
                                       join_timeout=SEND_TIMEOUT + 1.0)

    # The sender thread ---------------------------------------------------

    def _sender_loop(self) -> None:
        while not self.ctx.fenced:
            try:
                messages = self._rounds.get(timeout=TURN_POLL)
            except queue.Empty:
                continue
            self._send_all(messages)

    def _send_all(self, messages: list[Message]) -> None:
        turn = self.services.delivery.sending
        try:
            if not self._wait_turn():
                return
            try:
                for message in messages:
                    if self.ctx.fenced or not self.services.store.still_pending(
                            message.entry_ids):
                        break
                    if not self._send_one(message):
                        break
            finally:
                turn.release()
        except Exception:
            # A bug, or the store failing: back off as after any failure, so
            # a fault that repeats cannot turn into a tight loop of resends.
            logger.exception("[NOTIFY] The Telegram sender failed; the next flush starts anew")
            self.services.delivery.failed(time.monotonic())
        finally:
            self.post(WorkerDone("send"))

    def _wait_turn(self) -> bool:
        while not self.services.delivery.sending.acquire(timeout=TURN_POLL):
            if self.ctx.fenced:
                return False
        return True

    def _send_one(self, message: Message) -> bool:
        """Send one message and record what came of it; False: stop this round."""
        assert self._transport is not None
        try:
            self._transport.send(message.text)
        except TelegramRefused as exc:
            self._refused(message, exc)
            return True  # that message is over; the next may well be taken
        except NotifyError as exc:
            self._failed(message, exc)
            return False
        self.services.delivery.delivered(message, time.monotonic())
        self.services.store.mark_sent(message.entry_ids, time.time())
        self.services.metrics.notifications.labels(result="sent").inc()
        return True

    def _refused(self, message: Message, exc: TelegramRefused) -> None:
        self.services.delivery.refused(message, time.monotonic())
        self.services.store.mark_failed(message.entry_ids, str(exc), time.time())
        self.services.metrics.notifications.labels(result="failed").inc()
        logger.critical("[NOTIFY] Telegram refused an alert for good, so it is only in the log"
                        " (check telegram.chat_id): %s | alert: %s", exc,
                        headline(message.text))

    def _failed(self, message: Message, exc: NotifyError) -> None:
        retry_after = exc.retry_after if isinstance(exc, TelegramRetryAfter) else None
        self.services.delivery.failed(time.monotonic(), retry_after)
        self.services.store.count_attempt(message.entry_ids)
        result = "retry_after" if retry_after is not None else "error"
        self.services.metrics.notifications.labels(result=result).inc()
        level = logging.ERROR if exc.permanent else logging.WARNING
        logger.log(level, "[NOTIFY] Telegram delivery failed, will retry: %s", exc)
