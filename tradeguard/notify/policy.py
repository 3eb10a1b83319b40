"""When the notifier sends what: rate limit, digests, duplicate folding, retry backoff.

No I/O, `now` (monotonic) is passed in. The notifier hands `plan` the
pending outbox entries (oldest first) and the time; it sends the plan's
messages in order, stops at the first failure, reports each outcome with
`delivered` / `refused` / `failed`, marks ids sent in the store, and plans
again at `retry_at` (or when a new alert wakes it). The methods take a lock:
a replaced notifier's sender may still report an outcome while the next one
plans.

The rules, and the decisions behind them:
- At most `max_per_minute` messages are delivered in any sliding 60 s window
  (Telegram limits bots per chat; a flood must not get the bot throttled).
  A failed send costs no slot; a refused one (Telegram said no to that
  message) does, since Telegram counted the request.
- Critical alerts take the free slots first, but never all of them while
  other alerts wait: a quarter of the budget (at least one slot, none when
  the budget is a single message) is kept for the rest. Criticals that do not
  fit wait in order for the next free slot; nothing is dropped.
- Criticals of one kind pending together are one message: the newest in
  full (its numbers are the current truth), the other headlines listed under
  "Also:". A critical whose kind and headline went out within
  `repeat_interval` (a position still blind) waits, and its repeats fold into
  one message per interval; a new headline (another position blind, another
  close failed) goes at once and carries the kind's waiting repeats with it.
  A critical is never folded into the digest of lesser alerts.
- When more non-critical messages are pending than slots remain, the last
  free slot carries one digest, "N more alerts:" with the first few
  headlines; its entry ids are all the folded ones (full texts are in the log).
- "The same text is not delivered twice", for every severity: identical
  pending texts become one message marked "(xN)", and a text delivered within
  `dedupe_window` is marked sent without sending. Texts folded into a digest
  or listed under "Also:" were not delivered whole, so they do not count.
- Messages of one plan are in order of their first entry.
- After a failure nothing is sent until Telegram's `retry_after` has passed
  (the transport caps it) or, without one, an exponential backoff from
  `backoff_initial` to `backoff_max`; a delivery resets the backoff.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from tradeguard.alerts import OutboxEntry, Severity, headline
from tradeguard.backoff import Backoff

WINDOW = 60.0
DIGEST_HEADLINES = 5
REPEAT_INTERVAL = 60.0  # as often as the monitor repeats a blind alert

RepeatKey = tuple[str, str]  # (kind, headline): "the same critical"


@dataclass(frozen=True)
class Message:
    """One Telegram message and the outbox entries it delivers."""

    text: str
    entry_ids: tuple[int, ...]
    alert_text: str | None = None  # the alert text it carries whole; None for a digest
    critical: bool = False
    repeat_keys: tuple[RepeatKey, ...] = ()  # the criticals it carries


@dataclass(frozen=True)
class Plan:
    """What to do now.

    `duplicates`: ids to mark sent without sending (already delivered).
    `retry_at`: when to plan again if no new alert arrives first; `now`
    itself when there are messages (report them, then plan again), None when
    nothing is left waiting.
    """

    messages: tuple[Message, ...]
    duplicates: tuple[int, ...]
    retry_at: float | None


def _count(n: int) -> str:
    return f" (x{n})" if n > 1 else ""


def _with_count(text: str, n: int) -> str:
    first, newline, rest = text.partition("\n")
    return first + _count(n) + newline + rest


@dataclass
class _Group:
    """Pending entries with one identical text, in order of arrival."""

    text: str
    entries: list[OutboxEntry] = field(default_factory=list)

    @property
    def first_id(self) -> int:
        return self.entries[0].id

    def message(self) -> Message:
        return Message(_with_count(self.text, len(self.entries)),
                       tuple(e.id for e in self.entries), alert_text=self.text)


@dataclass
class _Fold:
    """Pending criticals of one kind: one message, the newest in full."""

    kind: str
    entries: list[OutboxEntry] = field(default_factory=list)

    @property
    def first_id(self) -> int:
        return self.entries[0].id

    def repeat_keys(self) -> list[RepeatKey]:
        return list(dict.fromkeys((self.kind, headline(e.text)) for e in self.entries))

    def message(self) -> Message:
        newest = self.entries[-1]
        counts = Counter(headline(e.text) for e in self.entries)  # in order of first appearance
        lines = [_with_count(newest.text, counts.pop(headline(newest.text)))]
        also = [h + _count(n) for h, n in counts.items()]
        if also:
            lines += ["Also:", *also[:DIGEST_HEADLINES]]
        if len(also) > DIGEST_HEADLINES:
            lines.append(f"...and {len(also) - DIGEST_HEADLINES} more.")
        return Message("\n".join(lines), tuple(e.id for e in self.entries), alert_text=newest.text,
                       critical=True, repeat_keys=tuple(self.repeat_keys()))


def _digest(groups: Sequence[_Group]) -> Message:
    total = sum(len(g.entries) for g in groups)
    lines = [f"{total} more alerts:"]
    lines += [headline(g.text) + _count(len(g.entries)) for g in groups[:DIGEST_HEADLINES]]
    if len(groups) > DIGEST_HEADLINES:
        lines.append(f"...and {len(groups) - DIGEST_HEADLINES} more.")
    lines.append("Full texts are in the TradeGuard log.")
    ids = tuple(e.id for g in groups for e in g.entries)
    return Message("\n".join(lines), ids)


@dataclass
class _Pending:
    """The plan's raw material: what is already delivered, and what waits."""

    duplicates: tuple[int, ...]
    folds: list[_Fold]  # criticals, by kind
    groups: list[_Group]  # the rest, by text


class DeliveryPolicy:
    """Decides which pending alerts go out now, as which messages, and when to look again."""

    def __init__(
        self,
        max_per_minute: int,
        dedupe_window: float = 300.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        repeat_interval: float = REPEAT_INTERVAL,
    ) -> None:
        if max_per_minute < 1:
            raise ValueError("max_per_minute must be at least 1")
        self.max_per_minute = max_per_minute
        self.dedupe_window = dedupe_window
        self.repeat_interval = repeat_interval
        self._lock = threading.Lock()
        # Held by a notifier's sender while it sends: a replaced incarnation's
        # sender finishes its message before the next one's starts.
        self.sending = threading.Lock()
        self._backoff = Backoff(backoff_initial, backoff_max, jitter=0.0, stable_after=0.0)
        self._sent: deque[tuple[float, bool]] = deque()  # (when, critical) in the last WINDOW
        self._delivered: dict[str, float] = {}  # alert text -> when it was delivered
        self._repeats: dict[RepeatKey, float] = {}  # critical -> when it was delivered
        self._failures = 0
        self._not_before = -math.inf

    @property
    def reserve(self) -> int:
        """Slots of a window that criticals leave to the other alerts waiting."""
        return 0 if self.max_per_minute == 1 else max(1, self.max_per_minute // 4)

    def plan(self, pending: Sequence[OutboxEntry], now: float) -> Plan:
        with self._lock:
            self._forget(now)
            waiting = self._sort(pending)
            if not (waiting.folds or waiting.groups):
                return Plan((), waiting.duplicates, None)
            if now < self._not_before:
                return Plan((), waiting.duplicates, self._not_before)
            due = [f for f in waiting.folds if self._due_at(f) <= now]
            messages = self._choose(due, waiting.groups)
            retry_at = now if messages else self._wake_at(waiting, due)
            return Plan(messages, waiting.duplicates, retry_at)

    def delivered(self, message: Message, now: float) -> None:
        with self._lock:
            self._sent.append((now, message.critical))
            if message.alert_text is not None:
                self._delivered[message.alert_text] = now
            for key in message.repeat_keys:
                self._repeats[key] = now
            self._failures = 0
            self._not_before = -math.inf

    def refused(self, message: Message, now: float) -> None:
        """Telegram will never take this message: it used a slot, and nothing else changes."""
        with self._lock:
            self._sent.append((now, message.critical))

    def failed(self, now: float, retry_after: float | None = None) -> None:
        """A send failed; `retry_after` is Telegram's own wait, honoured as given."""
        with self._lock:
            if retry_after is not None:
                self._not_before = now + retry_after
                return
            self._failures += 1
            self._not_before = now + self._backoff.base_delay(self._failures)

    def _forget(self, now: float) -> None:
        # `t + WINDOW <= now` rather than `t <= now - WINDOW`: retry_at is
        # exactly t + WINDOW, and the slot must be free when we wake at it.
        while self._sent and self._sent[0][0] + WINDOW <= now:
            self._sent.popleft()
        self._delivered = {
            text: at for text, at in self._delivered.items() if at + self.dedupe_window > now
        }
        self._repeats = {
            key: at for key, at in self._repeats.items() if at + self.repeat_interval > now
        }

    def _sort(self, pending: Sequence[OutboxEntry]) -> _Pending:
        duplicates: list[int] = []
        folds: dict[str, _Fold] = {}  # insertion order is order of first appearance
        groups: dict[str, _Group] = {}
        for entry in pending:
            if entry.text in self._delivered:
                duplicates.append(entry.id)
            elif entry.severity == Severity.CRITICAL.value:
                folds.setdefault(entry.kind, _Fold(entry.kind)).entries.append(entry)
            else:
                groups.setdefault(entry.text, _Group(entry.text)).entries.append(entry)
        return _Pending(tuple(duplicates), list(folds.values()), list(groups.values()))

    def _due_at(self, fold: _Fold) -> float:
        """When the fold may go: at once if it holds a headline not sent within the interval."""
        times = [self._repeats.get(key) for key in fold.repeat_keys()]
        if any(at is None for at in times):
            return -math.inf
        return min(at + self.repeat_interval for at in times if at is not None)

    def _wake_at(self, waiting: _Pending, due: list[_Fold]) -> float:
        """Nothing fits now: the next moment a slot frees or a held repeat falls due."""
        times = [self._due_at(f) for f in waiting.folds if f not in due]
        if (due or waiting.groups) and self._sent:
            times.append(self._sent[0][0] + WINDOW)
        return min(times)

    def _choose(self, folds: list[_Fold], groups: list[_Group]) -> tuple[Message, ...]:
        """Fill the free slots: criticals first, within their share; then singles and a digest."""
        free = max(self.max_per_minute - len(self._sent), 0)
        room = free
        if groups:
            critical_sent = sum(1 for _, critical in self._sent if critical)
            room = min(free, max(0, self.max_per_minute - self.reserve - critical_sent))
        picked: list[_Fold | _Group] = [*folds[:room]]
        room = free - len(picked)
        singles = groups if len(groups) <= room else groups[: max(room - 1, 0)]
        folded = groups[len(singles):] if room > 0 else []
        chosen = [(item.first_id, item.message()) for item in [*picked, *singles]]
        if folded:
            chosen.append((folded[0].first_id, _digest(folded)))
        chosen.sort(key=lambda pair: pair[0])
        return tuple(message for _, message in chosen)
