"""The shared, restart-surviving parts of the system that every actor reaches.

These objects outlive any one actor incarnation, which is how cached prices,
positions, feed and DNS status and queued alerts survive restarts: the store
keeps what must survive the process, the rest lives here for the supervisor's
lifetime.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tradeguard.alerts import AlertSink
from tradeguard.brokers import Broker
from tradeguard.closing import Closer
from tradeguard.config import Config
from tradeguard.health import DnsStatus, FeedStatus, MonitorStatus
from tradeguard.metrics import Metrics
from tradeguard.notify_policy import DeliveryPolicy
from tradeguard.prices import PriceCache
from tradeguard.resolver import Resolver
from tradeguard.store import Store
from tradeguard.web.ports import GuardApi

if TYPE_CHECKING:
    from actors.supervisor import ChildHandle


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
    feed_status: FeedStatus = field(default_factory=FeedStatus)
    dns_status: DnsStatus = field(default_factory=DnsStatus)
    monitor_status: MonitorStatus = field(default_factory=MonitorStatus)
    handles: dict[str, ChildHandle] = field(default_factory=dict)
    shutdown: threading.Event = field(default_factory=threading.Event)
    system_lookup: Callable[[str], list[str]] | None = None
    api: GuardApi | None = None  # what the HTTP layer calls (the System)
    api_port: int = 0  # the port ApiActor bound (0 until then: tests ask for any free one)
