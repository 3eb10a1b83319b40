"""The sink every alert goes to: logged at once, then queued durably for Telegram."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from tradeguard.alerts import LOG_LEVELS, Alert
from tradeguard.store import Store

logger = logging.getLogger(__name__)


def _noop() -> None:
    """No one to wake: the notifier finds the alert on its next look at the outbox."""


def _logged(alert: Alert) -> str:
    one_line = alert.text.replace("\n", " | ")
    logger.log(LOG_LEVELS[alert.severity], "[ALERT] %s", one_line)
    return one_line


class OutboxAlerts:
    """Logs every alert, then queues it in the store's outbox for Telegram.

    The outbox row is written before `on_enqueued` wakes the notifier, so an
    alert survives a notifier crash or a process restart between the two.
    Never raises: raising an alert must not break whatever raised it.
    """

    def __init__(
        self,
        store: Store,
        on_enqueued: Callable[[], None] = _noop,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._on_enqueued = on_enqueued
        self._clock = clock

    def alert(self, alert: Alert) -> None:
        one_line = _logged(alert)
        try:
            self._store.enqueue_alert(
                alert.kind, alert.severity.value, alert.text, self._clock()
            )
        except Exception:
            logger.exception("[ALERT] not queued for Telegram, only logged: %s", one_line)
            return
        self._wake()

    def queued(self, alert: Alert) -> None:
        """An alert already in the outbox, written with the transition it tells of."""
        _logged(alert)
        self._wake()

    def _wake(self) -> None:
        try:
            self._on_enqueued()
        except Exception:
            # The row is safe in the outbox; the notifier's own timer will find it.
            logger.exception("[ALERT] could not wake the notifier")
