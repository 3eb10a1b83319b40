"""What the stand-in's parts share: Kite's error answer and its time format."""

from __future__ import annotations

import time


class KiteRefusal(Exception):
    """An error answer: HTTP status, Kite's error_type and message."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


def stamp(wall: float | None = None) -> str:
    """Kite's timestamps: local wall time, "YYYY-MM-DD HH:MM:SS" (19 characters, which the SDK
    turns into datetimes)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall or time.time()))
