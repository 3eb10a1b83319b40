"""The feed's wire format "json" (SPEC §5): the subscribe frame and tick parsing.

A text frame is one tick object, a JSON array of tick objects, or
`{"type": "heartbeat"}`. Parsing never raises: whatever is wrong with a frame,
or with one element of an array, becomes a reason code in `rejects`, and the
good elements of the same frame are kept. A binary frame arrives as `bytes`
and is rejected whole.

Symbols are normalised as position symbols are (`positions.py`: stripped,
upper-cased), so a feed that writes `boschltd ` still prices `BOSCHLTD`
(finding A12). `ts` is optional and decides nothing (`prices.py`), so a
malformed one is dropped and counted ("bad_ts") while the price is kept
(finding A18).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from tradeguard.errors import FeedError
from tradeguard.feed import Frame, Parsed, Target
from tradeguard.prices import Tick

# A 50-tick frame is about 3 KB; a megabyte is not a price update.
MAX_FRAME_CHARS = 1 << 20
MAX_SYMBOL_CHARS = 64
MAX_NAMES = 4096  # symbols remembered as already checked; a feed has a few hundred

_HEARTBEAT = "heartbeat"
_INF = math.inf
_REJECTED = object()  # what _document returns for a frame rejected whole

ParsedFrame = Parsed  # the name this module used before the FeedProtocol seam


class JsonProtocol:
    """SPEC §5 over `url`, which is static config."""

    max_frame_bytes = MAX_FRAME_CHARS

    def __init__(self, url: str) -> None:
        self._url = url
        self._names: dict[str, str] = {}

    def target(self) -> Target:
        if not self._url:
            raise FeedError("feed.url is not set")
        return Target(self._url)

    def subscribe(self, symbols: Sequence[str]) -> list[Frame]:
        return [subscribe_frame(symbols)]

    def parse(self, frames: Iterable[Frame], received_at: float) -> Parsed:
        return parse_frames(frames, received_at, self._names)

    def credential(self) -> str:
        return ""  # a json feed's credentials, if any, are in its static URL: they never change

    def token_rejected(self) -> bool:
        return True

    def token_accepted(self) -> bool:
        return True


def subscribe_frame(symbols: Iterable[str]) -> str:
    """The text frame that subscribes to `symbols`."""
    return json.dumps({"action": "subscribe", "symbols": list(symbols)})


def _make_loads() -> tuple[str, Callable[[str | bytes], Any]]:
    """orjson when installed (about 6x faster on a one-tick frame), else the standard library.

    orjson refuses NaN, Infinity and numbers that overflow a double, which
    would reject a whole array for one bad price; the standard library reads
    them, so a frame orjson refuses gets a second chance there and the bad
    tick is rejected on its own.
    """
    try:
        import orjson  # noqa: PLC0415 - optional speed-up
    except ImportError:  # pragma: no cover - orjson is optional
        return "json", json.loads

    def loads(text: str | bytes) -> Any:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return json.loads(text)

    return "orjson", loads


# The parser frames are read with, and its name (the bench's baseline uses it too).
JSON_PARSER, loads = _make_loads()


def parse_frame(data: Frame, received_at: float) -> Parsed:
    """Parse one frame; `received_at` (time.monotonic()) stamps every tick in it."""
    return parse_frames((data,), received_at)


def parse_frames(
    frames: Iterable[Frame], received_at: float, names: dict[str, str] | None = None
) -> Parsed:
    """Parse frames received together: their ticks in order, their rejects, any heartbeat.

    `names` maps each symbol as sent to its checked, normalised form; passing
    the same dict on every call saves checking a symbol twice.
    """
    parsed = Parsed()
    known = {} if names is None else names
    for data in frames:
        document = _document(parsed, data)
        if document is not _REJECTED:
            _add_elements(parsed, document if type(document) is list else (document,),
                          received_at, known)
    return parsed


def _document(parsed: Parsed, data: Frame) -> Any:
    """The frame's JSON document, or _REJECTED with the reason added to `parsed`."""
    if isinstance(data, bytes):
        parsed.rejects["binary"] += 1
        return _REJECTED
    if len(data) > MAX_FRAME_CHARS:
        parsed.rejects["too_large"] += 1
        return _REJECTED
    try:
        return loads(data)
    except (ValueError, RecursionError):
        parsed.rejects["bad_json"] += 1
        return _REJECTED


def _add_elements(parsed: Parsed, elements: Iterable[object], received_at: float,
                  names: dict[str, str]) -> None:
    add = parsed.ticks.append
    for element in elements:
        # The usual tick is accepted here without a function call (the feed's
        # hottest loop): a symbol seen before was checked and normalised then.
        # Anything else takes the careful path, which gives the same Tick.
        if type(element) is dict and "type" not in element:
            symbol, price, ts = element.get("symbol"), element.get("price"), element.get("ts")
            if (
                type(symbol) is str
                and (name := names.get(symbol)) is not None
                and type(price) is float
                and 0.0 < price < _INF
                and (ts is None or (type(ts) is float and 0.0 < ts < _INF))
            ):
                add(Tick(name, price, received_at, ts))
                continue
        _add_element(parsed, element, received_at, names)


def _add_element(parsed: Parsed, element: object, received_at: float,
                 names: dict[str, str]) -> None:
    if type(element) is not dict:
        parsed.rejects["not_object"] += 1
        return
    if "type" in element:
        if element["type"] == _HEARTBEAT:
            parsed.heartbeat = True
        else:
            parsed.rejects["unknown_type"] += 1
        return
    tick = _tick(parsed, element, received_at, names)
    if isinstance(tick, str):
        parsed.rejects[tick] += 1
    else:
        parsed.ticks.append(tick)


def _tick(parsed: Parsed, obj: dict[str, Any], received_at: float,
          names: dict[str, str]) -> Tick | str:
    """A Tick, or the reason code that rejects `obj`."""
    symbol = _symbol(obj.get("symbol"), names)
    if symbol in ("missing_symbol", "bad_symbol"):
        return symbol
    price = _number(obj.get("price"))
    if isinstance(price, str):
        return price
    if price <= 0:
        return "non_positive_price"
    return Tick(symbol, price, received_at, _ts(parsed, obj.get("ts")))


def _symbol(raw: object, names: dict[str, str]) -> str:
    """The normalised symbol (remembered in `names`), or its reason code."""
    if raw is None:
        return "missing_symbol"
    if type(raw) is not str:
        return "bad_symbol"
    name = raw.strip().upper()
    if not 0 < len(name) <= MAX_SYMBOL_CHARS or not name.isprintable():  # lone surrogates too
        return "bad_symbol"
    if len(names) >= MAX_NAMES:
        names.clear()  # a feed inventing symbols must not grow this without end
    names[raw] = name
    return name


def _ts(parsed: Parsed, raw: object) -> float | None:
    """The exchange time, or None (counted "bad_ts" when one was sent but is unusable)."""
    if raw is None:
        return None
    ts = _number(raw)
    if isinstance(ts, str) or ts <= 0:
        parsed.rejects["bad_ts"] += 1
        return None
    return ts


def _number(value: object) -> float | str:
    """A finite float, or "bad_price" / "non_finite_price"."""
    if type(value) is float:
        return value if math.isfinite(value) else "non_finite_price"
    if type(value) is int:
        try:
            return float(value)
        except OverflowError:  # the standard library reads 1e400-sized integers exactly
            return "non_finite_price"
    return "bad_price"
