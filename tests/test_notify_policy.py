from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import count

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradeguard.alerts import OutboxEntry
from tradeguard.notify.policy import REPEAT_INTERVAL, WINDOW, DeliveryPolicy, Message, Plan

_ids = count(1)


def entry(text: str, severity: str = "warning", created_at: float = 0.0,
          kind: str = "") -> OutboxEntry:
    return OutboxEntry(next(_ids), created_at, kind or f"kind-{text}", severity, text, 0)


def texts(plan: Plan) -> list[str]:
    return [m.text for m in plan.messages]


def deliver_all(policy: DeliveryPolicy, plan: Plan, now: float) -> None:
    for message in plan.messages:
        policy.delivered(message, now)


def test_under_budget_each_alert_is_its_own_message_in_order() -> None:
    policy = DeliveryPolicy(max_per_minute=5)
    pending = [entry("a\nbody a"), entry("b", "critical"), entry("c")]
    plan = policy.plan(pending, now=100.0)
    assert texts(plan) == ["a\nbody a", "b", "c"]
    assert [m.entry_ids for m in plan.messages] == [(e.id,) for e in pending]
    assert [m.critical for m in plan.messages] == [False, True, False]
    assert plan.retry_at == 100.0  # report the outcomes, then plan again
    deliver_all(policy, plan, 100.0)
    assert policy.plan([], 100.0) == Plan((), (), None)


def test_identical_pending_texts_are_one_message_with_a_count() -> None:
    policy = DeliveryPolicy(max_per_minute=5)
    pending = [entry("X: blind\nage 5m"), entry("other"), entry("X: blind\nage 5m"),
               entry("X: blind\nage 5m")]
    plan = policy.plan(pending, now=0.0)
    assert texts(plan) == ["X: blind (x3)\nage 5m", "other"]
    assert plan.messages[0].entry_ids == (pending[0].id, pending[2].id, pending[3].id)
    assert plan.messages[0].alert_text == "X: blind\nage 5m"


def test_a_text_delivered_within_the_window_is_marked_sent_not_sent_again() -> None:
    policy = DeliveryPolicy(max_per_minute=5, dedupe_window=300.0)
    first = entry("DNS back", "critical")
    plan = policy.plan([first], now=0.0)
    deliver_all(policy, plan, 0.0)

    again = entry("DNS back", "critical")
    plan = policy.plan([again], now=299.0)
    assert plan == Plan((), (again.id,), None)

    later = entry("DNS back", "critical")
    assert texts(policy.plan([later], now=300.0)) == ["DNS back"]


def test_a_failed_text_is_not_remembered_as_delivered() -> None:
    policy = DeliveryPolicy(max_per_minute=5)
    pending = [entry("a")]
    policy.plan(pending, now=0.0)
    policy.failed(now=0.0)
    assert texts(policy.plan(pending, now=1.0)) == ["a"]


def test_overflow_is_folded_into_one_digest_in_the_last_slot() -> None:
    policy = DeliveryPolicy(max_per_minute=3)
    pending = [entry(f"SYM{i}: price stale\nLast price 1.00") for i in range(10)]
    pending.insert(4, entry("SYM3: price stale\nLast price 1.00"))  # a repeat inside the digest
    plan = policy.plan(pending, now=0.0)

    assert len(plan.messages) == 3
    one, two, digest = plan.messages
    assert (one.entry_ids, two.entry_ids) == ((pending[0].id,), (pending[1].id,))
    assert set(digest.entry_ids) == {e.id for e in pending[2:]}
    assert digest.alert_text is None
    assert digest.text.split("\n") == [
        "9 more alerts:",
        "SYM2: price stale",
        "SYM3: price stale (x2)",
        "SYM4: price stale",
        "SYM5: price stale",
        "SYM6: price stale",
        "...and 3 more.",
        "Full texts are in the TradeGuard log.",
    ]


def test_criticals_go_first_and_are_never_folded_into_the_digest() -> None:
    policy = DeliveryPolicy(max_per_minute=4)  # one slot kept for the rest
    w1, c1, w2, c2, c3 = (entry("w1"), entry("c1", "critical"), entry("w2"),
                          entry("c2", "critical"), entry("c3", "critical"))
    plan = policy.plan([w1, c1, w2, c2, c3], now=0.0)
    digest = "2 more alerts:\nw1\nw2\nFull texts are in the TradeGuard log."
    assert texts(plan) == [digest, "c1", "c2", "c3"]  # in order of their first entries
    assert [m.critical for m in plan.messages] == [False, True, True, True]


def blind(symbol: str, age: float) -> OutboxEntry:
    text = f"CRITICAL: {symbol}: position BLIND, no usable price\nLast price 1.00, {age:.0f}s old"
    return entry(text, "critical", kind="position_blind")


def test_C1_a_repeated_critical_is_one_message_per_interval() -> None:
    """C1: a position still blind is re-alerted with a changing age; the repeats that
    pile up within the interval fold into one message, the newest in full."""
    policy = DeliveryPolicy(max_per_minute=20)  # repeat_interval 60 s
    deliver_all(policy, policy.plan([blind("BOSCH", 301)], 0.0), 0.0)
    repeats = [blind("BOSCH", 301 + t) for t in (10, 20, 30)]
    for n, now in enumerate((10.0, 20.0, 30.0), 1):
        assert policy.plan(repeats[:n], now) == Plan((), (), 60.0)
    plan = policy.plan(repeats, 60.0)
    assert texts(plan) == [
        "CRITICAL: BOSCH: position BLIND, no usable price (x3)\nLast price 1.00, 331s old"]
    assert plan.messages[0].entry_ids == tuple(e.id for e in repeats)


def test_C1_a_new_critical_of_the_kind_goes_at_once_and_carries_the_repeats() -> None:
    """C1: only repeats wait; another position going blind is news, sent at once."""
    policy = DeliveryPolicy(max_per_minute=20)
    deliver_all(policy, policy.plan([blind("BOSCH", 301)], 0.0), 0.0)
    pending = [blind("BOSCH", 311), blind("INFY", 300), blind("BOSCH", 321)]
    plan = policy.plan(pending, 20.0)
    assert texts(plan) == [
        "CRITICAL: BOSCH: position BLIND, no usable price (x2)\nLast price 1.00, 321s old\n"
        "Also:\nCRITICAL: INFY: position BLIND, no usable price"]
    deliver_all(policy, plan, 20.0)
    assert policy.plan([blind("INFY", 310)], 30.0).retry_at == 80.0


def test_C1_criticals_leave_a_share_of_the_budget_to_the_rest() -> None:
    """C1: with more criticals waiting than slots, the other alerts still move."""
    policy = DeliveryPolicy(max_per_minute=20)
    assert policy.reserve == 5
    criticals = [entry(f"c{i}", "critical") for i in range(30)]  # 30 different kinds
    closed = entry("BOSCH: position closed (stop-loss)")
    plan = policy.plan([*criticals, closed], 0.0)
    assert len(plan.messages) == 16
    assert texts(plan)[-1] == closed.text
    assert sum(m.critical for m in plan.messages) == 15
    deliver_all(policy, plan, 0.0)
    # alone, criticals take every slot
    assert len(policy.plan(criticals[15:], 0.0).messages) == 4
    assert DeliveryPolicy(max_per_minute=1).reserve == 0


def test_C1_a_blind_storm_does_not_starve_the_position_closed_alert() -> None:
    """C1: 50 positions blind for an hour, re-alerted every minute each; a close in the
    middle of it reaches the phone within a minute, and the blind ones cost a few slots."""
    policy = DeliveryPolicy(max_per_minute=20)
    pending: list[OutboxEntry] = []
    sent: list[tuple[float, Message]] = []
    closed = entry("BOSCH: position closed (stop-loss)\nP&L -1,600.00")
    for second in range(0, 3600, 5):
        now = float(second)
        if second % 60 == 0:
            pending += [blind(f"SYM{i}", 300 + now) for i in range(50)]
        if second == 1800:
            pending.append(closed)
        plan = policy.plan(pending, now)
        deliver_all(policy, plan, now)
        sent += [(now, m) for m in plan.messages]
        done = {i for m in plan.messages for i in m.entry_ids} | set(plan.duplicates)
        pending = [e for e in pending if e.id not in done]
    closed_at = next(t for t, m in sent if closed.id in m.entry_ids)
    assert closed_at - 1800 < 60
    assert len(sent) <= 62  # one blind message a minute, and the close
    assert len(pending) < 60  # the last minute's repeats at most


def test_the_window_slides() -> None:
    policy = DeliveryPolicy(max_per_minute=2)
    for now in (0.0, 10.0):
        deliver_all(policy, policy.plan([entry(f"t{now}")], now), now)
    waiting = [entry("late")]
    assert policy.plan(waiting, now=59.9).retry_at == 60.0
    plan = policy.plan(waiting, now=60.0)
    assert texts(plan) == ["late"]
    deliver_all(policy, plan, 60.0)
    assert policy.plan([entry("later")], now=60.0).retry_at == 70.0


def test_failures_back_off_exponentially_up_to_the_cap() -> None:
    policy = DeliveryPolicy(max_per_minute=5, backoff_initial=1.0, backoff_max=5.0)
    pending = [entry("a")]
    now = 0.0
    waits = []
    for _ in range(5):
        policy.failed(now)
        plan = policy.plan(pending, now)
        assert plan.messages == ()
        assert plan.retry_at is not None
        waits.append(plan.retry_at - now)
        now = plan.retry_at
    assert waits == [1.0, 2.0, 4.0, 5.0, 5.0]

    plan = policy.plan(pending, now)
    deliver_all(policy, plan, now)
    policy.failed(now)
    assert policy.plan([entry("b")], now).retry_at == now + 1.0  # a delivery reset it


def test_telegrams_retry_after_is_honoured_exactly() -> None:
    policy = DeliveryPolicy(max_per_minute=5)
    pending = [entry("a")]
    policy.failed(100.0, retry_after=7.5)
    assert policy.plan(pending, 107.49) == Plan((), (), 107.5)
    assert texts(policy.plan(pending, 107.5)) == ["a"]


def test_duplicates_are_reported_even_while_backing_off() -> None:
    policy = DeliveryPolicy(max_per_minute=5)
    deliver_all(policy, policy.plan([entry("a")], 0.0), 0.0)
    policy.failed(1.0)
    again = entry("a")
    assert policy.plan([again], 1.5) == Plan((), (again.id,), None)


def test_max_per_minute_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_per_minute"):
        DeliveryPolicy(max_per_minute=0)


# The properties, over a simulated outbox and a flaky Telegram ----------------

TEXTS = [("critical", "C0"), ("critical", "C1")] + [("warning", f"W{i}") for i in range(6)]


@dataclass
class Run:
    """What a notifier driving the policy saw."""

    sends: list[tuple[float, Message]] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    sent_ids: set[int] = field(default_factory=set)


def simulate(
    policy: DeliveryPolicy,
    arrivals: list[tuple[float, int]],
    outcomes: list[float | str],
) -> tuple[list[OutboxEntry], Run]:
    """Alerts arrive at their times; a notifier plans, sends, reports, sleeps till retry_at."""
    entries = [OutboxEntry(i + 1, at, "k", *TEXTS[t], 0) for i, (at, t) in enumerate(arrivals)]
    results = iter(outcomes)
    run = Run()
    arrived = 0
    wake: float | None = None
    for _ in range(10_000):
        due = [entries[arrived].created_at] if arrived < len(entries) else []
        due += [wake] if wake is not None else []
        if not due:
            return entries, run
        now = min(due)
        while arrived < len(entries) and entries[arrived].created_at <= now:
            arrived += 1
        wake = notify_round(policy, [e for e in entries[:arrived] if e.id not in run.sent_ids],
                            now, results, run)
    raise AssertionError("the notifier never settled")


def notify_round(
    policy: DeliveryPolicy,
    pending: list[OutboxEntry],
    now: float,
    results: Iterator[float | str],
    run: Run,
) -> float | None:
    while True:
        plan = policy.plan(pending, now)
        run.duplicates += plan.duplicates
        run.sent_ids.update(plan.duplicates)
        for message in plan.messages:
            result = next(results, "ok")
            if result != "ok":
                policy.failed(now, result if isinstance(result, float) else None)
                break
            policy.delivered(message, now)
            run.sends.append((now, message))
            run.sent_ids.update(message.entry_ids)
        if not plan.messages:
            return plan.retry_at
        pending = [e for e in pending if e.id not in run.sent_ids]


arrivals_strategy = st.lists(
    st.tuples(st.floats(0, 40), st.integers(0, len(TEXTS) - 1)), max_size=60
).map(lambda gaps: [(sum(g for g, _ in gaps[: i + 1]), t) for i, (_, t) in enumerate(gaps)])
outcomes_strategy = st.lists(
    st.one_of(st.just("ok"), st.just("fail"), st.floats(0, 90)), max_size=20
)


@settings(max_examples=300, deadline=None)
@given(
    arrivals=arrivals_strategy,
    outcomes=outcomes_strategy,
    max_per_minute=st.integers(1, 6),
    dedupe_window=st.floats(0, 400),
)
def test_delivery_properties(
    arrivals: list[tuple[float, int]],
    outcomes: list[float | str],
    max_per_minute: int,
    dedupe_window: float,
) -> None:
    policy = DeliveryPolicy(max_per_minute, dedupe_window=dedupe_window)
    entries, run = simulate(policy, arrivals, outcomes)
    times = [t for t, _ in run.sends]
    by_id = {e.id: e for e in entries}

    # never more than max_per_minute deliveries in any sliding 60 s window
    for t in times:
        assert sum(1 for u in times if t <= u < t + WINDOW) <= max_per_minute

    # every entry is delivered exactly once, or marked sent as a duplicate
    delivered_ids = [i for _, m in run.sends for i in m.entry_ids]
    assert len(delivered_ids) == len(set(delivered_ids))
    assert set(delivered_ids).isdisjoint(run.duplicates)
    assert set(delivered_ids) | set(run.duplicates) == set(by_id)

    # no critical entry ends up in a digest
    for _, message in run.sends:
        if message.alert_text is None:
            assert all(by_id[i].severity != "critical" for i in message.entry_ids)

    # order of first appearance, among criticals and among the rest
    for critical in (True, False):
        firsts = [min(m.entry_ids) for _, m in run.sends if m.critical is critical]
        assert firsts == sorted(firsts)

    # a repeated critical (kind and headline) goes at most once per repeat interval
    seen: dict[tuple[str, str], float] = {}
    for t, message in run.sends:
        if message.critical:
            keys = {(by_id[i].kind, by_id[i].text.split("\n")[0]) for i in message.entry_ids}
            assert any(k not in seen or seen[k] + REPEAT_INTERVAL <= t for k in keys)
            seen.update(dict.fromkeys(keys, t))

    # the same text is not delivered twice within the dedupe window
    last: dict[str, float] = {}
    for t, message in run.sends:
        if message.alert_text is not None:
            if message.alert_text in last:
                assert last[message.alert_text] + dedupe_window <= t
            last[message.alert_text] = t
