"""Kite Connect's WebSocket ticker as a `FeedProtocol` (SPEC §10 "Ticker").

`KiteFeed` (not the SDK's `KiteTicker`) knows where to connect (the access
token is asked for before every connect, so a token renewed in the morning
is used at once), which text frames subscribe a set of symbols, and how
Kite's frames become ticks. The transport, the watchdogs and reconnecting
are the feed actor's, as for every venue.

Decoding goes straight from the frame's bytes to `Tick`s: a frame whose
packets all have one length (what Kite sends in one mode) is read with one
`struct.iter_unpack` over a memoryview, only the token, the last price and
the exchange time of each packet; a frame that mixes lengths is walked
packet by packet. Every packet length is read whatever mode was asked for.
Nothing here raises on bad input: a wrong length, a token nobody subscribed,
a price that is not positive, a cut frame, each is a reject reason.

A 1-byte binary frame is Kite's heartbeat: `Parsed.heartbeat`, and life for
the silence watchdog (the transport counts its bytes). Text frames are
Kite's order updates (handed on in `Parsed.messages` as `KiteOrderUpdate`
for the broker-truth mirror), and `error` and `message` texts (logged,
rate-limited, and counted as "kite_error" / "kite_message").

Kite takes at most 3000 instruments on one connection. A symbol beyond that
is refused, not sent: a warning names it, and it is counted
"too_many_tokens" in the next parse's rejects (a second connection is not
built). A symbol the instrument master does not know is refused the same
way ("unknown_symbol").
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode

from tradeguard.brokers.kite import protocol as kite
from tradeguard.errors import FeedError
from tradeguard.feed import Frame, Parsed, Target
from tradeguard.feed.wire_json import loads
from tradeguard.prices import Tick

logger = logging.getLogger(__name__)

MAX_FRAME_BYTES = 1 << 20  # 3000 full packets are 558 KB
LOG_EVERY = 10.0  # seconds between log lines about one kind of text message or refusal
MAX_TEXT_CHARS = 200  # of a Kite error or message text in a log line
MAX_NAMED = 10  # refused symbols named in one log line
MAX_STRAYS = 4096  # tokens never subscribed but known to the master, remembered

_PACKET_HEAD = struct.Struct(">Ii")  # instrument_token (unsigned), last price
_STAMP = struct.Struct(">I")  # an exchange timestamp, epoch seconds


class InstrumentLookup(Protocol):
    """The instrument master as the ticker needs it (the Kite venue bundle provides one)."""

    def token(self, symbol: str) -> int | None:
        """The instrument token of `EXCHANGE:TRADINGSYMBOL` (or a bare symbol), None if unknown."""
        ...

    def symbol(self, token: int) -> str | None:
        """`EXCHANGE:TRADINGSYMBOL` of an instrument token, None if unknown."""
        ...


@dataclass(frozen=True, slots=True)
class KiteOrderUpdate:
    """One order update Kite pushed on the ticker (the postback payload), for SPEC §12."""

    data: Mapping[str, Any]
    received_at: float  # time.monotonic()


def _layout(length: int) -> tuple[struct.Struct, bool]:
    """The struct that reads (length, token, last price[, exchange time]) of one packet.

    Prices are read signed (the docs say int32; pykiteconnect reads unsigned):
    a garbage high bit is then a negative price, rejected, not a price of
    twenty million rupees that crosses every take-profit.
    """
    offset = kite.TIMESTAMP_OFFSET[length]
    if offset is None:
        return struct.Struct(f">HIi{length - 8}x"), False
    skip = offset - 8
    return struct.Struct(f">HIi{skip}xI{length - offset - 4}x"), True


_LAYOUTS = {length: _layout(length) for length in kite.PACKET_LENGTHS}


class KiteFeed:
    """SPEC §10's ticker: one connection, up to 3000 instruments. One thread at a time."""

    max_frame_bytes = MAX_FRAME_BYTES

    def __init__(
        self,
        url: str,
        api_key: str,
        token: Callable[[], str],
        instruments: InstrumentLookup,
        mode: str = kite.DEFAULT_MODE,
        *,
        rejected: Callable[[str], bool] | None = None,
        accepted: Callable[[str], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if mode not in kite.MODES:
            raise FeedError(f"feed.mode: Kite has no mode {mode!r} (known: ltp, quote, full)")
        self._url = url or kite.ROOT_URI
        self._api_key = api_key
        self._token = token
        self._instruments = instruments
        self.mode = mode
        self._rejected = rejected
        self._accepted = accepted
        self._clock = clock
        self._used = ""  # the token the last target() carried
        self._routes: dict[int, tuple[str, float]] = {}  # token -> (symbol, divisor)
        self._aliases: dict[int, tuple[str, ...]] = {}  # more symbols subscribed for a token
        self._strays: dict[int, tuple[str, float] | None] = {}
        self._pending: Counter[str] = Counter()  # refusals counted at the next parse
        self._logged: dict[str, float] = {}

    # Connecting ------------------------------------------------------------

    def target(self) -> Target:
        """The ticker URL with the current token; a new connection's subscription starts empty."""
        if not self._api_key:
            raise FeedError("Kite ticker: broker.api_key is not set")
        token = self._token()
        if not token:
            raise FeedError("Kite ticker: no access token (broker.token or broker.token_file)")
        self._used = token
        self._routes.clear()
        self._aliases.clear()
        query = urlencode({"api_key": self._api_key, "access_token": token})
        joiner = "&" if "?" in self._url else "?"
        return Target(f"{self._url}{joiner}{query}", dict(kite.VERSION_HEADER))

    def credential(self) -> str:
        """A fingerprint of the token target() would carry now (never the token itself)."""
        return hashlib.sha256(self._token().encode()).hexdigest()[:16]

    def token_rejected(self) -> bool:
        """The ticker refused the last target's token; True if this is news (alert once)."""
        return self._rejected(self._used) if self._rejected is not None else True

    def token_accepted(self) -> bool:
        """The ticker took the token; True if it had been refused (say it is back)."""
        return self._accepted(self._used) if self._accepted is not None else True

    # Subscribing -----------------------------------------------------------

    def subscribe(self, symbols: Sequence[str]) -> list[Frame]:
        """The subscribe and mode frames for the tokens of `symbols` not yet on this connection."""
        tokens: list[int] = []
        refused: dict[str, list[str]] = {}
        for symbol in symbols:
            token = self._instruments.token(symbol)
            if token is None:
                refused.setdefault("unknown_symbol", []).append(symbol)
            elif not self._route(symbol, token, tokens):
                refused.setdefault("too_many_tokens", []).append(symbol)
        for reason, names in refused.items():
            self._refuse(reason, names)
        if not tokens:
            return []
        return [json.dumps({"a": kite.ACTION_SUBSCRIBE, "v": tokens}),
                json.dumps({"a": kite.ACTION_MODE, "v": [self.mode, tokens]})]

    def _route(self, symbol: str, token: int, new: list[int]) -> bool:
        """Remember where `token`'s prices go; False if the connection is full."""
        known = self._routes.get(token)
        if known is not None:
            if known[0] != symbol and symbol not in self._aliases.get(token, ()):
                self._aliases[token] = (*self._aliases.get(token, ()), symbol)
            return True
        if len(self._routes) >= kite.MAX_TOKENS_PER_CONNECTION:
            return False
        self._routes[token] = (symbol, kite.divisor(token))
        new.append(token)
        return True

    def _refuse(self, reason: str, symbols: list[str]) -> None:
        self._pending[reason] += len(symbols)
        if self._due(reason):
            named = ", ".join(symbols[:MAX_NAMED]) + (" ..." if len(symbols) > MAX_NAMED else "")
            why = (f"Kite takes at most {kite.MAX_TOKENS_PER_CONNECTION} instruments on one "
                   "connection" if reason == "too_many_tokens"
                   else "not in the instrument master")
            logger.warning("[KITE] %d symbol(s) not subscribed, %s: %s", len(symbols), why, named)

    def _due(self, kind: str) -> bool:
        now = self._clock()
        last = self._logged.get(kind)
        if last is not None and 0 <= now - last < LOG_EVERY:
            return False
        self._logged[kind] = now
        return True

    # Parsing ---------------------------------------------------------------

    def parse(self, frames: Iterable[Frame], received_at: float) -> Parsed:
        parsed = Parsed()
        if self._pending:
            parsed.rejects.update(self._pending)
            self._pending.clear()
        for data in frames:
            if type(data) is bytes:
                if len(data) == kite.HEARTBEAT_BYTES:
                    parsed.heartbeat = True
                else:
                    self._binary(parsed, data, received_at)
            else:
                self._text(parsed, str(data), received_at)
        return parsed

    def _binary(self, parsed: Parsed, data: bytes, received_at: float) -> None:
        size = len(data)
        if size < 2:
            parsed.rejects["short_frame"] += 1
            return
        count = data[0] << 8 | data[1]
        if count == 0:
            return
        length = data[2] << 8 | data[3] if size >= 4 else 0
        layout = _LAYOUTS.get(length)
        stride = length + 2
        if layout is not None and size == 2 + count * stride and _uniform(data, stride, count):
            rows = layout[0].iter_unpack(memoryview(data)[2:])
            if layout[1]:
                self._timed(parsed, rows, received_at)
            else:
                self._untimed(parsed, rows, received_at)
            return
        self._timed(parsed, _walk(parsed, data, count), received_at)

    def _timed(self, parsed: Parsed, rows: Iterator[tuple[Any, ...]], received_at: float) -> None:
        """Ticks from (length, token, price, exchange time) rows (exchange time 0: none)."""
        routes, aliases, add = self._routes, self._aliases, parsed.ticks.append
        for _, token, price, ts in rows:
            route = routes.get(token) or self._stray(token)
            if route is None:
                parsed.rejects["unknown_token"] += 1
            elif price <= 0:
                parsed.rejects["non_positive_price"] += 1
            else:
                add(Tick(route[0], price / route[1], received_at, float(ts) if ts else None))
                if aliases and token in aliases:
                    self._alias_ticks(parsed, token, price / route[1], received_at)

    def _untimed(self, parsed: Parsed, rows: Iterator[tuple[Any, ...]],
                 received_at: float) -> None:
        """Ticks from (length, token, price) rows."""
        routes, aliases, add = self._routes, self._aliases, parsed.ticks.append
        for _, token, price in rows:
            route = routes.get(token) or self._stray(token)
            if route is None:
                parsed.rejects["unknown_token"] += 1
            elif price <= 0:
                parsed.rejects["non_positive_price"] += 1
            else:
                add(Tick(route[0], price / route[1], received_at))
                if aliases and token in aliases:
                    self._alias_ticks(parsed, token, price / route[1], received_at)

    def _alias_ticks(self, parsed: Parsed, token: int, price: float, received_at: float) -> None:
        for name in self._aliases[token]:
            parsed.ticks.append(Tick(name, price, received_at))

    def _stray(self, token: int) -> tuple[str, float] | None:
        """The route of a token this connection did not subscribe, if the master knows it."""
        if token in self._strays:
            return self._strays[token]
        if len(self._strays) >= MAX_STRAYS:
            self._strays.clear()  # a feed inventing tokens must not grow this without end
        symbol = self._instruments.symbol(token)
        route = None if symbol is None else (symbol, kite.divisor(token))
        self._strays[token] = route
        return route

    def _text(self, parsed: Parsed, text: str, received_at: float) -> None:
        try:
            document = loads(text)
        except (ValueError, RecursionError):
            parsed.rejects["bad_json"] += 1
            return
        kind = document.get("type") if type(document) is dict else None
        data = document.get("data") if type(document) is dict else None
        if kind == kite.TYPE_ORDER and type(data) is dict:
            parsed.messages.append(KiteOrderUpdate(data, received_at))
        elif kind in (kite.TYPE_ERROR, kite.TYPE_MESSAGE):
            reason = f"kite_{kind}"
            parsed.rejects[reason] += 1
            if self._due(reason):
                logger.warning("[KITE] ticker %s: %s", kind, _short(data))
        else:
            parsed.rejects["unknown_message"] += 1


def _uniform(data: bytes, stride: int, count: int) -> bool:
    """Every packet of `data` has the first one's length (read at C speed, no loop here)."""
    return data[2::stride] == data[2:3] * count and data[3::stride] == data[3:4] * count


def _walk(parsed: Parsed, data: bytes, count: int) -> Iterator[tuple[int, int, int, int]]:
    """(length, token, price, exchange time) of each packet of a frame that mixes lengths."""
    size, pos = len(data), 2
    for _ in range(count):
        start = pos + 2
        length = data[pos] << 8 | data[pos + 1] if start <= size else 0
        if start > size or start + length > size:
            parsed.rejects["truncated"] += 1
            return
        pos = start + length
        if length not in kite.TIMESTAMP_OFFSET:
            parsed.rejects["bad_length"] += 1
            continue
        token, price = _PACKET_HEAD.unpack_from(data, start)
        offset = kite.TIMESTAMP_OFFSET[length]
        yield length, token, price, 0 if offset is None else _STAMP.unpack_from(
            data, start + offset)[0]
    if pos != size:
        parsed.rejects["trailing_bytes"] += 1


def _short(data: object) -> str:
    text = " ".join(str(data).split())
    return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS - 3] + "..."
