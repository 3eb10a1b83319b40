"""Status records the actors write and the health endpoint, page and metrics read.

Each is a small lock-protected record: one actor writes, anyone reads a
snapshot. They live outside the actors so a restart does not reset them.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FeedStatus:
    host: str = ""
    connected: bool = False
    connected_ip: str | None = None
    resolved_via: str | None = None
    subscribed: set[str] = field(default_factory=set)
    reconnect_attempts: int = 0
    network_errors: int = 0
    last_message_mono: float | None = None
    connected_since: float | None = None
    last_error: str | None = None
    rejected: dict[str, int] = field(default_factory=dict)
    token_ok: bool | None = None  # False while the feed refuses the token (None: not known yet)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def update(self, **values: Any) -> None:
        with self._lock:
            for key, value in values.items():
                setattr(self, key, value)

    def count_error(self, error: str) -> None:
        with self._lock:
            self.network_errors += 1
            self.last_error = error

    def count_attempt(self) -> None:
        with self._lock:
            self.reconnect_attempts += 1

    def add_subscribed(self, symbols: list[str]) -> None:
        with self._lock:
            self.subscribed |= set(symbols)

    def count_rejects(self, reasons: list[str]) -> None:
        with self._lock:
            for reason in reasons:
                self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def last_message_age(self, now_mono: float | None = None) -> float | None:
        now = time.monotonic() if now_mono is None else now_mono
        with self._lock:
            if self.last_message_mono is None:
                return None
            return round(max(0.0, now - self.last_message_mono), 3)

    def snapshot(self) -> dict[str, Any]:
        age = self.last_message_age()
        with self._lock:
            return {
                "connected": self.connected,
                "subscribed_symbols": len(self.subscribed),
                "reconnect_attempts": self.reconnect_attempts,
                "network_errors": self.network_errors,
                "host": self.host,
                "connected_ip": self.connected_ip,
                "resolved_via": self.resolved_via,
                "last_message_age_seconds": age,
                "last_error": self.last_error,
                "rejected_frames": dict(self.rejected),
                "token_ok": self.token_ok,
            }


@dataclass
class ServerHealth:
    ok: bool
    latency_ms: float | None
    error: str | None = None


@dataclass
class DnsStatus:
    system_ok: bool = True
    failures: int = 0
    down_since: float | None = None
    servers: dict[str, ServerHealth] = field(default_factory=dict)
    last_check: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, system: ServerHealth, servers: dict[str, ServerHealth], now: float) -> str:
        """Store one health check; returns "down", "back" or "" for the system resolver."""
        with self._lock:
            was_ok = self.system_ok
            self.system_ok = system.ok
            self.servers = dict(servers)
            self.servers["system"] = system
            self.last_check = now
            if not system.ok:
                self.failures += 1
            if was_ok and not system.ok:
                self.down_since = now
                return "down"
            if not was_ok and system.ok:
                return "back"
            return ""

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "system_ok": self.system_ok,
                "failures": self.failures,
                "last_check_age_seconds": (
                    None if self.last_check is None
                    else round(time.time() - self.last_check, 3)
                ),
                "servers": {
                    name: {"ok": s.ok, "latency_ms": s.latency_ms, "error": s.error}
                    for name, s in self.servers.items()
                },
            }


@dataclass
class MonitorStatus:
    """What the monitor's last sweep found. Awaiting a first price is neither blind nor stale."""

    blind: set[str] = field(default_factory=set)
    stale: set[str] = field(default_factory=set)
    last_sweep: float | None = None  # time.monotonic()
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def update(self, blind: set[str], stale: set[str], now: float) -> None:
        with self._lock:
            self.blind = set(blind)
            self.stale = set(stale)
            self.last_sweep = now

    def blind_symbols(self) -> list[str]:
        with self._lock:
            return sorted(self.blind)

    def stale_symbols(self) -> list[str]:
        with self._lock:
            return sorted(self.stale)
