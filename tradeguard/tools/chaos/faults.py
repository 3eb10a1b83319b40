"""The faults a chaos run injects: how each is made, healed, and seen to be survived.

A fault is injected, held for a random time, healed, and then `recovered`
is polled until TradeGuard shows it is whole again in the part the fault
hit (ticks flowing, DNS checks passing, closes finishing, the outbox empty,
the actor restarted). `Chaos` picks the kinds in a shuffled cycle, so a run
long enough for one cycle injects every kind at least once, and keeps a few
faults active at a time.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tradeguard.errors import TradeGuardError
from tradeguard.positions import State
from tradeguard.tools.bench.guard import ticks_forwarded
from tradeguard.tools.chaos.world import World

ACTORS = ("FeedActor", "CacheActor", "MonitorActor", "NotifierActor", "DnsHealthActor",
          "ApiActor")
GAP = (0.4, 1.6)  # seconds between two injections
MAX_ACTIVE = 3


class Fault:
    """One injection of one kind."""

    kind: ClassVar[str]
    hold: ClassVar[tuple[float, float]] = (1.0, 4.0)  # seconds from inject to heal

    def __init__(self, world: World, rng: random.Random) -> None:
        self.world = world
        self.rng = rng
        self.healed_wall = 0.0

    def inject(self, seconds: float) -> bool:
        """Break something; False if it could not be done (the API was down)."""
        raise NotImplementedError

    def heal(self) -> None:
        """Undo it; the default suits faults that end by themselves."""

    def recovered(self) -> bool:
        raise NotImplementedError


class _FeedFault(Fault):
    def heal(self) -> None:
        self._restore()
        self.healed_wall = time.time()
        self.ticks_at_heal = ticks_forwarded(self.world.system)

    def _restore(self) -> None:
        raise NotImplementedError

    def recovered(self) -> bool:
        status = self.world.system.services.feed_status
        return status.connected and ticks_forwarded(self.world.system) > self.ticks_at_heal


class FeedKilled(_FeedFault):
    kind = "feed_killed"
    hold = (0.5, 3.0)

    def inject(self, seconds: float) -> bool:
        self.world.exchange.stop()
        return True

    def _restore(self) -> None:
        self.world.exchange.start()


class FeedHalfOpen(_FeedFault):
    kind = "feed_half_open"
    hold = (2.0, 5.0)  # long enough for the ping timeout to notice

    def inject(self, seconds: float) -> bool:
        self.world.exchange.half_open(True)
        return True

    def _restore(self) -> None:
        self.world.exchange.half_open(False)


class _DnsFault(Fault):
    def recovered(self) -> bool:
        snapshot = self.world.system.services.dns_status.snapshot()
        age = snapshot["last_check_age_seconds"]
        checked_since = age is not None and age < time.time() - self.healed_wall
        return checked_since and self._healthy(snapshot)

    def _healthy(self, snapshot: dict[str, object]) -> bool:
        raise NotImplementedError


class FallbackDnsDown(_DnsFault):
    kind = "fallback_dns_down"

    def inject(self, seconds: float) -> bool:
        self.world.dns_down()
        return True

    def heal(self) -> None:
        self.world.dns_up()
        self.healed_wall = time.time()

    def _healthy(self, snapshot: dict[str, object]) -> bool:
        servers = snapshot["servers"]
        assert isinstance(servers, dict)
        return bool(servers.get(self.world.dns_address, {}).get("ok"))


class SystemResolverFailing(_DnsFault):
    kind = "system_resolver_failing"
    hold = (1.0, 6.0)

    def inject(self, seconds: float) -> bool:
        self.world.resolver.failing = True
        return True

    def heal(self) -> None:
        self.world.resolver.failing = False
        self.healed_wall = time.time()

    def _healthy(self, snapshot: dict[str, object]) -> bool:
        return snapshot["system_ok"] is True


class _BrokerFault(Fault):
    def recovered(self) -> bool:
        """No close is stuck: every claimed or failed close has finished."""
        live = self.world.system.services.store.live_positions()
        return not any(p.state in (State.CLOSING, State.CLOSE_FAILED) for p in live)


class Broker500(_BrokerFault):
    kind = "broker_500"

    def inject(self, seconds: float) -> bool:
        self.world.broker.fail_next(self.rng.randint(1, 8), 500)
        return True

    def heal(self) -> None:
        self.world.broker.fail_next(0)


class BrokerHanging(_BrokerFault):
    kind = "broker_hanging"
    hold = (1.0, 3.0)

    def inject(self, seconds: float) -> bool:
        self.world.broker.hang(True)
        return True

    def heal(self) -> None:
        self.world.broker.hang(False)


class _TelegramFault(Fault):
    def recovered(self) -> bool:
        return self.world.system.services.store.pending_count() == 0


class TelegramFailing(_TelegramFault):
    kind = "telegram_failing"

    def inject(self, seconds: float) -> bool:
        failures = self.rng.randint(1, 3)
        if self.rng.random() < 0.5:
            self.world.telegram.fail_next(failures, 500)
        else:
            self.world.telegram.rate_limit_next(failures, retry_after=1)
        return True


class TelegramHanging(_TelegramFault):
    kind = "telegram_hanging"
    hold = (1.0, 3.0)  # under the notifier's 10 s timeout: a held message is delivered once

    def inject(self, seconds: float) -> bool:
        self.world.telegram.hang(seconds)
        return True


class _ActorFault(Fault):
    hold = (0.0, 0.0)
    mode: ClassVar[str]

    def inject(self, seconds: float) -> bool:
        self.actor = self.rng.choice(ACTORS)
        self.restarts = self._status()["restarts"]
        try:
            status, _ = self.world.guard().call(
                "POST", "/api/v1/debug/fault", {"actor": self.actor, "kind": self.mode})
        except TradeGuardError:
            return False
        return status == 202

    def recovered(self) -> bool:
        status = self._status()
        return bool(status["alive"]) and int(status["restarts"]) > self.restarts

    def _status(self) -> dict[str, Any]:
        return self.world.system.supervisor.status()[self.actor]


class ActorCrashed(_ActorFault):
    kind = "actor_crashed"
    mode = "crash"


class ActorHung(_ActorFault):
    kind = "actor_hung"
    mode = "hang"


KINDS: tuple[type[Fault], ...] = (
    FeedKilled, FeedHalfOpen, FallbackDnsDown, SystemResolverFailing, Broker500, BrokerHanging,
    TelegramFailing, TelegramHanging, ActorCrashed, ActorHung,
)


@dataclass
class _Active:
    fault: Fault
    heal_at: float


@dataclass
class Chaos:
    """Injects faults at random, heals them when due, and counts what was survived."""

    world: World
    rng: random.Random
    injected: Counter[str] = field(default_factory=Counter)
    survived: Counter[str] = field(default_factory=Counter)
    active: list[_Active] = field(default_factory=list)
    healed: list[Fault] = field(default_factory=list)  # waiting to be seen recovered
    _cycle: list[type[Fault]] = field(default_factory=list)
    _next_at: float = 0.0

    def turn(self, injecting: bool) -> None:
        """One look: heal what is due, count recoveries, maybe inject one more."""
        now = time.monotonic()
        for entry in [a for a in self.active if a.heal_at <= now or not injecting]:
            self.active.remove(entry)
            entry.fault.heal()
            self.healed.append(entry.fault)
        for fault in [f for f in self.healed if f.recovered()]:
            self.healed.remove(fault)
            self.survived[fault.kind] += 1
        if injecting and now >= self._next_at and len(self.active) < MAX_ACTIVE:
            self._next_at = now + self.rng.uniform(*GAP)
            self._inject_next(now)

    def _inject_next(self, now: float) -> None:
        if not self._cycle:
            self._cycle = list(KINDS)
            self.rng.shuffle(self._cycle)
        # A kind is not injected again before TradeGuard got over its last one:
        # faults that pile up (Telegram's queued failures, each met with a
        # longer backoff) would test patience, not recovery.
        busy = {a.fault.kind for a in self.active} | {f.kind for f in self.healed}
        kind = next((k for k in self._cycle if k.kind not in busy), None)
        if kind is None:
            return
        self._cycle.remove(kind)
        fault = kind(self.world, self.rng)
        seconds = self.rng.uniform(*kind.hold)
        if fault.inject(seconds):
            self.injected[kind.kind] += 1
            self.active.append(_Active(fault, now + seconds))
        else:
            self._cycle.append(kind)  # not injected (the API was down): try it again later

    @property
    def settled(self) -> bool:
        return not self.active and not self.healed
