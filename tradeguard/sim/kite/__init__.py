"""A Kite Connect stand-in on loopback: REST, instrument master, ticker, order updates, GTTs.

For the demo, the tests and the bench; proved against Kite's official SDK in
tests/test_kite_sim.py.
"""

from __future__ import annotations

from tradeguard.sim.kite.book import KiteBook
from tradeguard.sim.kite.errors import KiteRefusal
from tradeguard.sim.kite.gtt import Gtts
from tradeguard.sim.kite.instruments import DEFAULT_INSTRUMENTS, Instrument
from tradeguard.sim.kite.packets import HEARTBEAT, Level, Quote, divisor, frame, packet
from tradeguard.sim.kite.rest import KiteRestServer
from tradeguard.sim.kite.standin import ACCESS_TOKEN, API_KEY, KiteStandIn
from tradeguard.sim.kite.ticker import KiteTickerServer

__all__ = [
    "ACCESS_TOKEN", "API_KEY", "DEFAULT_INSTRUMENTS", "HEARTBEAT", "Gtts", "Instrument", "KiteBook",
    "KiteRefusal", "KiteRestServer", "KiteStandIn", "KiteTickerServer", "Level", "Quote",
    "divisor", "frame", "packet",
]
