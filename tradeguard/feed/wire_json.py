"""The feed's wire format "json" (SPEC §5): the subscribe frame and tick parsing.

A text frame is one tick object, a JSON array of tick objects, or
`{"type": "heartbeat"}`. Parsing never raises: whatever is wrong with a frame,
or with one element of an array, becomes a reason code in `rejects`, and the
good elements of the same frame are kept. A binary frame arrives as `bytes`
and is rejected whole.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tradeguard.prices import Tick

# A 50-tick frame is about 3 KB; a megabyte is not a price update.
MAX_FRAME_CHARS = 1 << 20
MAX_SYMBOL_CHARS = 64

_HEARTBEAT = "heartbeat"
_INF = math.inf
_REJECTED = object()  # what _document returns for a frame rejected whole


@dataclass(slots=True)
class ParsedFrame:
    """What one frame held: good ticks, one reason code per bad part, a heartbeat flag."""

    ticks: list[Tick] = field(default_factory=list)
    rejects: list[str] = field(default_factory=list)
    heartbeat: bool = False


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


def parse_frame(data: str | bytes, received_at: float) -> ParsedFrame:
    """Parse one frame; `received_at` (time.time()) stamps every tick in it."""
    return parse_frames((data,), received_at)


def parse_frames(frames: Iterable[str | bytes], received_at: float) -> ParsedFrame:
    """Parse frames received together: their ticks in order, their rejects, any heartbeat."""
    parsed = ParsedFrame()
    for data in frames:
        document = _document(parsed, data)
        if document is not _REJECTED:
            _add_elements(parsed, document if type(document) is list else (document,),
                          received_at)
    return parsed


def _document(parsed: ParsedFrame, data: str | bytes) -> Any:
    """The frame's JSON document, or _REJECTED with the reason added to `parsed`."""
    if isinstance(data, bytes):
        parsed.rejects.append("binary")
        return _REJECTED
    if len(data) > MAX_FRAME_CHARS:
        parsed.rejects.append("too_large")
        return _REJECTED
    try:
        return loads(data)
    except (ValueError, RecursionError):
        parsed.rejects.append("bad_json")
        return _REJECTED


def _add_elements(parsed: ParsedFrame, elements: Iterable[object], received_at: float) -> None:
    add = parsed.ticks.append
    for element in elements:
        # The usual tick is accepted here without a function call (the feed's
        # hottest loop); anything else takes the careful path, which gives the
        # same Tick for what this accepts.
        if type(element) is dict and "type" not in element:
            symbol, price, ts = element.get("symbol"), element.get("price"), element.get("ts")
            if (
                type(symbol) is str
                and type(price) is float
                and 0.0 < price < _INF
                and (ts is None or (type(ts) is float and 0.0 < ts < _INF))
                and 0 < len(symbol) <= MAX_SYMBOL_CHARS
                and symbol.isprintable()
            ):
                add(Tick(symbol, price, received_at, ts))
                continue
        _add_element(parsed, element, received_at)


def _add_element(parsed: ParsedFrame, element: object, received_at: float) -> None:
    if type(element) is not dict:
        parsed.rejects.append("not_object")
        return
    if "type" in element:
        if element["type"] == _HEARTBEAT:
            parsed.heartbeat = True
        else:
            parsed.rejects.append("unknown_type")
        return
    tick = _tick(element, received_at)
    if isinstance(tick, str):
        parsed.rejects.append(tick)
    else:
        parsed.ticks.append(tick)


def _tick(obj: dict[str, Any], received_at: float) -> Tick | str:
    """A Tick, or the reason code that rejects `obj`."""
    symbol = obj.get("symbol")
    if symbol is None:
        return "missing_symbol"
    if (
        type(symbol) is not str
        or not 0 < len(symbol) <= MAX_SYMBOL_CHARS
        or not symbol.isprintable()  # also refuses lone surrogates
    ):
        return "bad_symbol"
    price = _number(obj.get("price"))
    if isinstance(price, str):
        return price
    if price <= 0:
        return "non_positive_price"
    raw_ts = obj.get("ts")
    ts = None if raw_ts is None else _number(raw_ts)
    if isinstance(ts, str) or (ts is not None and ts <= 0):
        return "bad_ts"
    return Tick(symbol, price, received_at, ts)


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
