"""Kite Connect's ticker, byte by byte: the facts the decoder and the stand-in share.

Named as Kite names them. Sources: the Kite Connect v3 docs page /websocket
("Message structure", "Quote packet structure", "Index packet structure"),
and pykiteconnect `kiteconnect/ticker.py` (v5.2.2, read in site-packages:
`KiteTicker.EXCHANGE_MAP`, `_parse_binary`, `_split_packets`). Tags as in
../shared/brokers.md section 1: [C] confirmed in the docs or the SDK source.
"""

from __future__ import annotations

import struct
from typing import Final

ROOT_URI: Final = "wss://ws.kite.trade"  # [C] ticker.py KiteTicker.ROOT_URI
VERSION_HEADER: Final = {"X-Kite-Version": "3"}  # [C] ticker.py connect(): sent at the handshake

# Request frames, JSON text: {"a": action, "v": value}. [C] docs; ticker.py subscribe(), set_mode()
ACTION_SUBSCRIBE: Final = "subscribe"
ACTION_UNSUBSCRIBE: Final = "unsubscribe"
ACTION_MODE: Final = "mode"
MODE_LTP: Final = "ltp"
MODE_QUOTE: Final = "quote"
MODE_FULL: Final = "full"
MODES: Final = (MODE_LTP, MODE_QUOTE, MODE_FULL)
DEFAULT_MODE: Final = MODE_LTP  # SPEC §3 feed.mode; Kite's own default after subscribe is quote [S]

MAX_TOKENS_PER_CONNECTION: Final = 3000  # [C] docs /websocket "up to 3000 instruments"
MAX_CONNECTIONS_PER_API_KEY: Final = 3  # [C] docs /websocket

# Binary frames, big-endian. [C] docs "Message structure"; ticker.py _split_packets:
# uint16 number of packets, then per packet uint16 length and that many bytes.
FRAME_COUNT: Final = struct.Struct(">H")
PACKET_LENGTH: Final = struct.Struct(">H")
HEARTBEAT_BYTES: Final = 1  # [C] docs: "a 1 byte 'heartbeat' every couple seconds"

# Packet lengths: the mode is known from the length alone. [C] docs; ticker.py _parse_binary
LTP_LENGTH: Final = 8
QUOTE_LENGTH: Final = 44
FULL_LENGTH: Final = 184
INDEX_QUOTE_LENGTH: Final = 28
INDEX_FULL_LENGTH: Final = 32
PACKET_LENGTHS: Final = (LTP_LENGTH, INDEX_QUOTE_LENGTH, INDEX_FULL_LENGTH, QUOTE_LENGTH,
                         FULL_LENGTH)

# Offsets inside one packet. [C] docs "Quote packet structure", "Index packet structure"
OFFSET_INSTRUMENT_TOKEN: Final = 0  # every packet
OFFSET_LAST_PRICE: Final = 4  # every packet
OFFSET_LAST_TRADED_QUANTITY: Final = 8  # quote, full
OFFSET_AVERAGE_PRICE: Final = 12
OFFSET_VOLUME: Final = 16
OFFSET_BUY_QUANTITY: Final = 20
OFFSET_SELL_QUANTITY: Final = 24
OFFSET_OPEN: Final = 28  # quote, full: open high low close at 28 32 36 40
OFFSET_HIGH: Final = 32
OFFSET_LOW: Final = 36
OFFSET_CLOSE: Final = 40
OFFSET_LAST_TRADE_TIME: Final = 44  # full only
OFFSET_OI: Final = 48
OFFSET_OI_DAY_HIGH: Final = 52
OFFSET_OI_DAY_LOW: Final = 56
OFFSET_EXCHANGE_TIMESTAMP: Final = 60  # full only: epoch seconds
OFFSET_DEPTH: Final = 64  # full only: 10 entries of 12 bytes, 5 bids then 5 offers
DEPTH_ENTRY: Final = struct.Struct(">IiH2x")  # quantity, price, orders (uint16), padding [C]
DEPTH_ENTRIES: Final = 10
INDEX_OFFSET_HIGH: Final = 8  # index packets put high low open close at 8 12 16 20 [C]
INDEX_OFFSET_LOW: Final = 12
INDEX_OFFSET_OPEN: Final = 16
INDEX_OFFSET_CLOSE: Final = 20
INDEX_OFFSET_CHANGE: Final = 24  # signed; pykiteconnect ignores it
INDEX_OFFSET_EXCHANGE_TIMESTAMP: Final = 28  # index full only

# Where each length keeps the exchange timestamp (None: the packet has none).
TIMESTAMP_OFFSET: Final[dict[int, int | None]] = {
    LTP_LENGTH: None, QUOTE_LENGTH: None, INDEX_QUOTE_LENGTH: None,
    FULL_LENGTH: OFFSET_EXCHANGE_TIMESTAMP, INDEX_FULL_LENGTH: INDEX_OFFSET_EXCHANGE_TIMESTAMP,
}

# Segment = instrument_token & 0xFF. [C] ticker.py KiteTicker.EXCHANGE_MAP
SEGMENT_MASK: Final = 0xFF
NSE, NFO, CDS, BSE, BFO, BCD, MCX, MCXSX, INDICES, NCO = 1, 2, 3, 4, 5, 6, 7, 8, 9, 12
EXCHANGE_MAP: Final = {"nse": NSE, "nfo": NFO, "cds": CDS, "bse": BSE, "bfo": BFO, "bcd": BCD,
                       "mcx": MCX, "mcxsx": MCXSX, "indices": INDICES, "nco": NCO}

# Prices are integers in the segment's unit. [C] ticker.py _parse_binary: cds 10000000.0,
# bcd and nco 10000.0 (nco was [U] in brokers.md; v5.2.2 has it), everything else 100.0 (paise).
PAISE: Final = 100.0
CDS_DIVISOR: Final = 10_000_000.0
BCD_DIVISOR: Final = 10_000.0
DIVISORS: Final = {CDS: CDS_DIVISOR, BCD: BCD_DIVISOR, NCO: BCD_DIVISOR}

# Text frames from Kite: {"type": ..., "data": ...}. [C] docs "Postbacks and non-binary updates"
TYPE_ORDER: Final = "order"  # data: the order postback payload
TYPE_ERROR: Final = "error"  # data: a string
TYPE_MESSAGE: Final = "message"  # data: a string from the broker


def divisor(instrument_token: int) -> float:
    """What a price of this instrument is divided by to give rupees (or the quote currency)."""
    return DIVISORS.get(instrument_token & SEGMENT_MASK, PAISE)


def tradable(instrument_token: int) -> bool:
    """Indices carry a price and cannot be traded. [C] ticker.py `tradable`."""
    return instrument_token & SEGMENT_MASK != INDICES
