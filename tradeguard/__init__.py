"""TradeGuard: keeps stop-losses working when the network does not."""

from __future__ import annotations

__version__ = "0.1.0"
