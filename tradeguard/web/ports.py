"""What the HTTP layer needs from the running system (implemented by tradeguard.guard.Guard).

The Flask app depends on this protocol only, so it holds no threads and no
Pykka, and can be served by any WSGI server. Arguments arrive parsed and
checked by `tradeguard.web.api`: a body is validated once, there.
"""

from __future__ import annotations

from typing import Any, Protocol

from tradeguard.guard import LevelChange
from tradeguard.positions import Position, Reason


class GuardApi(Protocol):
    api_token: str  # never empty once the system is built
    fault_injection: bool  # debug.fault_injection
    protect_reads: bool  # GET /api/v1/... needs the token (api.host is not loopback)
    api_host: str  # api.host: with loopback names, the Host headers answered

    def connection_health(self) -> dict[str, Any]:
        """SPEC §6 connection-health body."""

    def list_positions(self) -> list[dict[str, Any]]:
        """Live and recently closed positions, each Position.as_json()."""

    def open_position(self, request: Position) -> dict[str, Any]:
        """Open; PositionError 409."""

    def patch_position(self, symbol: str, change: LevelChange) -> dict[str, Any]:
        """Move levels; PositionError 400 / 404."""

    def emergency_close(self, symbol: str, reason: Reason) -> dict[str, Any]:
        """SPEC §6 success body; PositionError 404 / 409 / 502."""

    def release_position(self, symbol: str) -> dict[str, Any]:
        """Stop guarding without closing; PositionError 404 / 409."""

    def health(self) -> tuple[bool, list[str]]:
        """(every actor up, names of those that are not)."""

    def inject_fault(self, actor: str, kind: str) -> None:
        """ValueError for an unknown actor or kind."""

    def metrics_exposition(self) -> bytes:
        """Prometheus text format."""

    def status_view(self) -> dict[str, Any]:
        """Everything the status page shows, as JSON (see tradeguard.guard.Guard.status_view)."""
