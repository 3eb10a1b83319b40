"""Kite ticker packets as the exchange sends them (brokers.md §1.2-1.4).

Big-endian, prices as integers in the segment's smallest unit: paise (/100),
CDS /10^7, BCD and NCO /10^4 (the segment is the token's low byte). The
stand-in builds every layout Kite sends, so that a client is tested against
all of them whatever mode it asked for.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

SEGMENT_CDS = 3
SEGMENT_BCD = 6
SEGMENT_INDICES = 9
SEGMENT_NCO = 12
HEARTBEAT = b"\x00"  # any 1-byte binary frame; the SDKs ignore its content
MODES = ("ltp", "quote", "full")


def divisor(token: int) -> int:
    """The price divisor of the token's segment (pykiteconnect `_parse_binary`)."""
    segment = token & 0xFF
    if segment == SEGMENT_CDS:
        return 10_000_000
    if segment in (SEGMENT_BCD, SEGMENT_NCO):
        return 10_000
    return 100


def is_index(token: int) -> bool:
    return token & 0xFF == SEGMENT_INDICES


@dataclass
class Level:
    """One market-depth entry."""

    quantity: int
    price: float
    orders: int


@dataclass
class Quote:
    """What one packet says about one instrument; prices in rupees (or the pair's unit)."""

    token: int
    last_price: float
    last_quantity: int = 1
    average_price: float = 0.0
    volume: int = 0
    buy_quantity: int = 0
    sell_quantity: int = 0
    open: float = 0.0
    high: float = 0.0
    low: float = 0.0
    close: float = 0.0
    last_trade_time: int = 0
    oi: int = 0
    oi_day_high: int = 0
    oi_day_low: int = 0
    exchange_time: int = 0
    change: float = 0.0  # index packets only: the exchange's absolute change
    bids: list[Level] = field(default_factory=list)
    offers: list[Level] = field(default_factory=list)


def _units(price: float, token: int) -> int:
    return round(price * divisor(token))


def ltp_packet(quote: Quote) -> bytes:
    """8 bytes: token, last price."""
    return struct.pack(">Ii", quote.token, _units(quote.last_price, quote.token))


def quote_packet(quote: Quote) -> bytes:
    """44 bytes for a tradable instrument, 28 for an index."""
    if is_index(quote.token):
        return _index_packet(quote)
    t = quote.token
    return struct.pack(
        ">Iiiiiiiiiii", t, _units(quote.last_price, t), quote.last_quantity,
        _units(quote.average_price, t), quote.volume, quote.buy_quantity, quote.sell_quantity,
        _units(quote.open, t), _units(quote.high, t), _units(quote.low, t), _units(quote.close, t),
    )


def full_packet(quote: Quote) -> bytes:
    """184 bytes for a tradable instrument (quote + times, OI, 5+5 depth), 32 for an index."""
    if is_index(quote.token):
        return _index_packet(quote) + struct.pack(">I", quote.exchange_time)
    head = quote_packet(quote) + struct.pack(
        ">IIIII", quote.last_trade_time, quote.oi, quote.oi_day_high, quote.oi_day_low,
        quote.exchange_time,
    )
    return head + _depth(quote.bids, quote.token) + _depth(quote.offers, quote.token)


def _index_packet(quote: Quote) -> bytes:
    """28 bytes; note the order: last, high, low, open, close, change (brokers.md §1.3)."""
    t = quote.token
    return struct.pack(
        ">Iiiiiii", t, _units(quote.last_price, t), _units(quote.high, t), _units(quote.low, t),
        _units(quote.open, t), _units(quote.close, t), _units(quote.change, t),
    )


def _depth(levels: Sequence[Level], token: int) -> bytes:
    padded = list(levels[:5]) + [Level(0, 0.0, 0)] * (5 - min(len(levels), 5))
    return b"".join(
        struct.pack(">IiHxx", level.quantity, _units(level.price, token), level.orders)
        for level in padded
    )


PACKERS = {"ltp": ltp_packet, "quote": quote_packet, "full": full_packet}


def packet(quote: Quote, mode: str) -> bytes:
    return PACKERS[mode](quote)


def frame(packets: Iterable[bytes]) -> bytes:
    """One binary frame: the packet count, then each packet after its length."""
    items = list(packets)
    body = b"".join(struct.pack(">H", len(p)) + p for p in items)
    return struct.pack(">H", len(items)) + body
