"""What the HTTP layer needs from the running system (implemented by actors.system.System).

The Flask app depends on this protocol only, so it holds no threads and no
Pykka, and can be served by any WSGI server.
"""

from __future__ import annotations

from typing import Any, Protocol


class GuardApi(Protocol):
    api_token: str  # never empty once the system is built
    fault_injection: bool  # debug.fault_injection
    protect_reads: bool  # GET /api/v1/... needs the token (api.host is not loopback)

    def connection_health(self) -> dict[str, Any]:
        """SPEC §6 connection-health body."""

    def list_positions(self) -> list[dict[str, Any]]:
        """Live and recently closed positions, each Position.as_json()."""

    def open_position(self, body: Any) -> dict[str, Any]:
        """Validate and open; PositionError 400 / 409."""

    def patch_position(self, symbol: str, body: Any) -> dict[str, Any]:
        """Move levels; PositionError 400 / 404."""

    def emergency_close(self, body: Any) -> dict[str, Any]:
        """SPEC §6 success body; PositionError 400 / 404 / 409 / 502."""

    def health(self) -> tuple[bool, list[str]]:
        """(every actor up, names of those that are not)."""

    def inject_fault(self, actor: str, kind: str) -> None:
        """ValueError for an unknown actor or kind."""

    def metrics_exposition(self) -> bytes:
        """Prometheus text format."""

    def status_view(self) -> dict[str, Any]:
        """Everything the status page shows, as JSON (see actors.system.System.status_view)."""
