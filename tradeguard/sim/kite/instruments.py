"""The stand-in's instrument master: a few real-looking rows in Kite's CSV columns.

Tokens follow Kite's rule that the low byte is the segment (brokers.md §1.4),
so every segment with its own divisor is represented.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

COLUMNS = ("instrument_token", "exchange_token", "tradingsymbol", "name", "last_price",
           "expiry", "strike", "tick_size", "lot_size", "instrument_type", "segment", "exchange")


@dataclass(frozen=True)
class Instrument:
    token: int
    tradingsymbol: str
    name: str
    exchange: str
    segment: str
    instrument_type: str = "EQ"
    tick_size: float = 0.05
    lot_size: int = 1
    expiry: str = ""
    strike: float = 0.0

    @property
    def symbol(self) -> str:
        """`EXCHANGE:TRADINGSYMBOL`, as TradeGuard and Kite's quote API write it."""
        return f"{self.exchange}:{self.tradingsymbol}"

    def row(self, last_price: float) -> list[str]:
        return [str(self.token), str(self.token >> 8), self.tradingsymbol, self.name,
                _num(last_price), self.expiry, _num(self.strike), _num(self.tick_size),
                str(self.lot_size), self.instrument_type, self.segment, self.exchange]


def _num(value: float) -> str:
    return f"{value:g}"


DEFAULT_INSTRUMENTS = (
    Instrument(408065, "INFY", "INFOSYS", "NSE", "NSE"),
    Instrument(2953217, "TCS", "TATA CONSULTANCY SERV LT", "NSE", "NSE"),
    Instrument(558337, "BOSCHLTD", "BOSCH", "NSE", "NSE"),
    Instrument(738561, "RELIANCE", "RELIANCE INDUSTRIES", "NSE", "NSE"),
    Instrument(13238530, "NIFTY26DECFUT", "NIFTY", "NFO", "NFO-FUT", "FUT", 0.1, 75,
               "2026-12-29"),
    Instrument(883459, "USDINR26DECFUT", "USDINR", "CDS", "CDS-FUT", "FUT", 0.0025, 1,
               "2026-12-29"),
    Instrument(315910, "EURINR26DECFUT", "EURINR", "BCD", "BCD-FUT", "FUT", 0.0025, 1,
               "2026-12-29"),
    Instrument(128028676, "SBIN", "STATE BANK OF INDIA", "BSE", "BSE"),
    Instrument(256265, "NIFTY 50", "NIFTY 50", "NSE", "INDICES", "EQ", 0.0, 0),
    Instrument(265, "SENSEX", "SENSEX", "BSE", "INDICES", "EQ", 0.0, 0),
)


def instruments_csv(instruments: list[Instrument], prices: dict[str, float]) -> bytes:
    """The master as `GET /instruments` serves it (header row first)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for item in instruments:
        writer.writerow(item.row(prices.get(item.symbol, 0.0)))
    return out.getvalue().encode()
