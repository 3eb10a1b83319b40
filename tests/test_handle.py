"""ChildHandle: what it logs when it gives up on a durable message."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pykka
import pytest

from actors.handle import MAX_DELIVERIES, ChildHandle
from actors.messages import TickBatch
from tradeguard.prices import Tick


class _NeverAcks(pykka.ThreadingActor):
    """A child that dies (in effect) before it acknowledges anything."""

    def on_receive(self, message: object) -> None:
        return None


@pytest.fixture
def stop_all() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all()


@pytest.mark.usefixtures("stop_all")
def test_C8_a_dropped_batch_is_logged_by_type_and_size(caplog: pytest.LogCaptureFixture) -> None:
    """C8: the drop was logged with the batch's full repr, one multi-MB line."""
    handle = ChildHandle("MonitorActor")
    batch = TickBatch(tuple(Tick(f"SYM{i}", 100.0 + i, float(i)) for i in range(5000)), 0.0)
    handle.tell_durable(batch)
    for _ in range(MAX_DELIVERIES):  # each incarnation gets it, none acknowledges it
        handle._attach(_NeverAcks.start())
    dropped = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert dropped == ["MonitorActor: dropping TickBatch of 5000 ticks after 3 deliveries"]
    assert handle.pending_count() == 0
