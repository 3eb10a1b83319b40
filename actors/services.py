"""The shared, restart-surviving parts of the system that every actor reaches.

These objects outlive any one actor incarnation, which is how cached prices,
positions, feed and DNS status and queued alerts survive restarts: the store
keeps what must survive the process, the rest lives here for the supervisor's
lifetime.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tradeguard.alerts import AlertSink
from tradeguard.brokers import Broker, Venue
from tradeguard.closing import Closer
from tradeguard.config import Config
from tradeguard.health import DnsStatus, FeedStatus, MonitorStatus
from tradeguard.market import Market
from tradeguard.metrics import Metrics
from tradeguard.monitoring import Memory
from tradeguard.net.resolver import Resolver
from tradeguard.notify.policy import DeliveryPolicy
from tradeguard.prices import PriceCache
from tradeguard.store import Store
from tradeguard.web.ports import GuardApi

if TYPE_CHECKING:
    from actors.handle import ChildHandle


class Faults:
    """Start failures armed by fault injection (the third way a Pykka actor dies)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fail_starts: set[str] = set()

    def arm_start_failure(self, name: str) -> None:
        with self._lock:
            self._fail_starts.add(name)

    def take_start_failure(self, name: str) -> bool:
        with self._lock:
            if name in self._fail_starts:
                self._fail_starts.discard(name)
                return True
            return False


@dataclass
class ApiEndpoint:
    """What ApiActor serves, and where: `port` as asked (0: any free one), `bound` once up."""

    guard: GuardApi
    port: int
    bound: int = 0  # written by ApiActor when it listens, read by System.api_port
    # Bound by the first ApiActor incarnation and kept for the next ones (so a
    # restart refuses no connection); closed by System.stop.
    sockets: list[socket.socket] | None = None


@dataclass
class Services:
    cfg: Config
    store: Store
    cache: PriceCache
    resolver: Resolver
    broker: Broker
    closer: Closer
    alerts: AlertSink
    metrics: Metrics
    delivery: DeliveryPolicy
    api: ApiEndpoint
    handles: dict[str, ChildHandle]
    feed_status: FeedStatus = field(default_factory=FeedStatus)
    dns_status: DnsStatus = field(default_factory=DnsStatus)
    monitor_status: MonitorStatus = field(default_factory=MonitorStatus)
    monitor_memory: Memory = field(default_factory=Memory)  # outlives MonitorActor restarts
    shutdown: threading.Event = field(default_factory=threading.Event)
    faults: Faults = field(default_factory=Faults)
    blind_repeat: float = 60.0  # seconds between repeated blind alerts for one position
    system_lookup: Callable[[str], list[str]] | None = None
    market: Market | None = None  # the trading day (SPEC §14); None: every market always open
    venue: Venue | None = None  # Kite: the broker's venue, which also builds the feed protocol
