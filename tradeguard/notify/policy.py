"""When the notifier sends what: rate limit, digests, duplicate folding, retry backoff.

Pure: no threads, no I/O, `now` is passed in. The notifier hands `plan` the
pending outbox entries (oldest first) and the time; it sends the plan's
messages in order, stops at the first failure, reports each outcome with
`delivered` / `failed`, marks ids sent in the store, and plans again at
`retry_at` (or when a new alert wakes it).

The rules, and the decisions behind them:
- At most `max_per_minute` messages are delivered in any sliding 60 s window
  (Telegram limits bots per chat; a flood must not get the bot throttled).
  Only deliveries count: a failed send costs no slot.
- Critical alerts take the free slots first. They are never folded into a
  digest and never dropped: when more criticals are pending than slots are
  free, the rest wait in order for the next free slot, and everything
  non-critical waits behind them. A critical's own words are what an operator
  acts on, so losing them to a summary is worse than a late warning.
- When more non-critical messages are pending than slots remain, the last
  free slot carries one digest, "N more alerts:" with the first few
  headlines; its entry ids are all the folded ones (full texts are in the log).
- "The same text is not delivered twice", for every severity: identical
  pending texts become one message marked "(xN)", and a text delivered within
  `dedupe_window` is marked sent without sending. A critical that is still
  true carries changing numbers (a price's age), so it is not silenced.
  Texts folded into a digest were not delivered whole, so they do not count.
- Messages of one plan are in order of their first entry.
- After a failure nothing is sent until Telegram's `retry_after` has passed
  (honoured exactly) or, without one, an exponential backoff from
  `backoff_initial` to `backoff_max`; a delivery resets the backoff.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from tradeguard.alerts import OutboxEntry, Severity, headline
from tradeguard.backoff import Backoff

WINDOW = 60.0
DIGEST_HEADLINES = 5


@dataclass(frozen=True)
class Message:
    """One Telegram message and the outbox entries it delivers."""

    text: str
    entry_ids: tuple[int, ...]
    alert_text: str | None = None  # the alert text it carries; None for a digest
    critical: bool = False


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


@dataclass
class _Group:
    """Pending entries with one identical text, in order of arrival."""

    text: str
    entries: list[OutboxEntry] = field(default_factory=list)

    @property
    def critical(self) -> bool:
        return any(e.severity == Severity.CRITICAL.value for e in self.entries)

    @property
    def count_suffix(self) -> str:
        return f" (x{len(self.entries)})" if len(self.entries) > 1 else ""

    def message(self) -> Message:
        first, newline, rest = self.text.partition("\n")
        return Message(
            text=first + self.count_suffix + newline + rest,
            entry_ids=tuple(e.id for e in self.entries),
            alert_text=self.text,
            critical=self.critical,
        )


def _digest(groups: Sequence[_Group]) -> Message:
    total = sum(len(g.entries) for g in groups)
    lines = [f"{total} more alerts:"]
    lines += [headline(g.text) + g.count_suffix for g in groups[:DIGEST_HEADLINES]]
    if len(groups) > DIGEST_HEADLINES:
        lines.append(f"...and {len(groups) - DIGEST_HEADLINES} more.")
    lines.append("Full texts are in the TradeGuard log.")
    ids = tuple(e.id for g in groups for e in g.entries)
    return Message("\n".join(lines), ids)


class DeliveryPolicy:
    """Decides which pending alerts go out now, as which messages, and when to look again."""

    def __init__(
        self,
        max_per_minute: int,
        dedupe_window: float = 300.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
    ) -> None:
        if max_per_minute < 1:
            raise ValueError("max_per_minute must be at least 1")
        self.max_per_minute = max_per_minute
        self.dedupe_window = dedupe_window
        self._backoff = Backoff(backoff_initial, backoff_max, jitter=0.0, stable_after=0.0)
        self._sent: deque[float] = deque()  # delivery times within the last WINDOW
        self._delivered: dict[str, float] = {}  # alert text -> when it was delivered
        self._failures = 0
        self._not_before = -math.inf

    def plan(self, pending: Sequence[OutboxEntry], now: float) -> Plan:
        self._forget(now)
        duplicates, groups = self._group(pending)
        if now < self._not_before:
            return Plan((), duplicates, self._not_before if groups else None)
        messages = self._choose(groups, self.max_per_minute - len(self._sent))
        if messages:
            retry_at: float | None = now
        elif groups:
            retry_at = self._sent[0] + WINDOW  # no free slot: wait for the oldest to expire
        else:
            retry_at = None
        return Plan(messages, duplicates, retry_at)

    def delivered(self, message: Message, now: float) -> None:
        self._sent.append(now)
        if message.alert_text is not None:
            self._delivered[message.alert_text] = now
        self._failures = 0
        self._not_before = -math.inf

    def failed(self, now: float, retry_after: float | None = None) -> None:
        """A send failed; `retry_after` is Telegram's own wait, honoured as given."""
        if retry_after is not None:
            self._not_before = now + retry_after
            return
        self._failures += 1
        self._not_before = now + self._backoff.base_delay(self._failures)

    def _forget(self, now: float) -> None:
        # `t + WINDOW <= now` rather than `t <= now - WINDOW`: retry_at is
        # exactly t + WINDOW, and the slot must be free when we wake at it.
        while self._sent and self._sent[0] + WINDOW <= now:
            self._sent.popleft()
        self._delivered = {
            text: at for text, at in self._delivered.items() if at + self.dedupe_window > now
        }

    def _group(self, pending: Sequence[OutboxEntry]) -> tuple[tuple[int, ...], list[_Group]]:
        duplicates: list[int] = []
        groups: dict[str, _Group] = {}  # insertion order is order of first appearance
        for entry in pending:
            if entry.text in self._delivered:
                duplicates.append(entry.id)
            else:
                groups.setdefault(entry.text, _Group(entry.text)).entries.append(entry)
        return tuple(duplicates), list(groups.values())

    def _choose(self, groups: list[_Group], free: int) -> tuple[Message, ...]:
        """Fill `free` slots: criticals first, then singles, the overflow as one digest."""
        free = max(free, 0)
        critical = [i for i, g in enumerate(groups) if g.critical]
        others = [i for i, g in enumerate(groups) if not g.critical]
        picked = critical[:free]
        room = free - len(picked)
        if len(picked) < len(critical) or room == 0:
            others = []  # no slot left, or criticals still waiting: the rest waits
        if len(others) <= room:
            singles, folded = others, []
        else:
            singles, folded = others[: room - 1], others[room - 1 :]
        chosen = [(i, groups[i].message()) for i in picked + singles]
        if folded:
            chosen.append((folded[0], _digest([groups[i] for i in folded])))
        chosen.sort(key=lambda pair: pair[0])
        return tuple(message for _, message in chosen)
