"""The json wire format: what parse_frame keeps, what it rejects, and that it never raises."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradeguard.feed import PROTOCOLS, Target
from tradeguard.feed.wire_json import (
    MAX_FRAME_CHARS,
    MAX_NAMES,
    JsonProtocol,
    parse_frame,
    parse_frames,
    subscribe_frame,
)
from tradeguard.positions import validate_symbol
from tradeguard.prices import Tick, valid_price

NOW = 1767779060.0


def test_subscribe_frame_is_the_spec_shape() -> None:
    frame = subscribe_frame(iter(["BOSCHLTD", "INFY"]))
    assert json.loads(frame) == {"action": "subscribe", "symbols": ["BOSCHLTD", "INFY"]}


def test_one_tick_is_stamped_with_receive_time_and_keeps_exchange_time() -> None:
    parsed = parse_frame('{"symbol": "BOSCHLTD", "price": 575.0, "ts": 1767779056.123}', NOW)
    assert parsed.ticks == [Tick("BOSCHLTD", 575.0, NOW, 1767779056.123)]
    assert not parsed.rejects
    assert not parsed.heartbeat


def test_ts_is_optional_and_integer_prices_are_floats() -> None:
    parsed = parse_frame('{"symbol": "INFY", "price": 1500}', NOW)
    assert parsed.ticks == [Tick("INFY", 1500.0, NOW, None)]
    assert type(parsed.ticks[0].price) is float


def test_heartbeat() -> None:
    parsed = parse_frame('{"type": "heartbeat"}', NOW)
    assert parsed.heartbeat
    assert parsed.ticks == []
    assert not parsed.rejects


def test_an_array_keeps_its_good_ticks_and_rejects_bad_ones_one_by_one() -> None:
    frame = (
        '[{"symbol": "A", "price": 1.5}, {"symbol": "B", "price": NaN},'
        ' {"symbol": "C", "price": -2}, 7, {"symbol": "D", "price": 2.5, "ts": 5}]'
    )
    parsed = parse_frame(frame, NOW)
    assert [(t.symbol, t.price) for t in parsed.ticks] == [("A", 1.5), ("D", 2.5)]
    assert parsed.rejects == {"non_finite_price": 1, "non_positive_price": 1, "not_object": 1}


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("{not json", "bad_json"),
        ("", "bad_json"),
        ('"a string"', "not_object"),
        ("null", "not_object"),
        ("[[]]", "not_object"),
        ('{"price": 1.0}', "missing_symbol"),
        ('{"symbol": null, "price": 1.0}', "missing_symbol"),
        ('{"symbol": "", "price": 1.0}', "bad_symbol"),
        ('{"symbol": "   ", "price": 1.0}', "bad_symbol"),
        ('{"symbol": 42, "price": 1.0}', "bad_symbol"),
        ('{"symbol": "A\\nB", "price": 1.0}', "bad_symbol"),
        ('{"symbol": "\\ud800", "price": 1.0}', "bad_symbol"),
        ('{"symbol": "' + "X" * 65 + '", "price": 1.0}', "bad_symbol"),
        ('{"symbol": "A"}', "bad_price"),
        ('{"symbol": "A", "price": "575.0"}', "bad_price"),
        ('{"symbol": "A", "price": true}', "bad_price"),
        ('{"symbol": "A", "price": null}', "bad_price"),
        ('{"symbol": "A", "price": NaN}', "non_finite_price"),
        ('{"symbol": "A", "price": Infinity}', "non_finite_price"),
        ('{"symbol": "A", "price": -Infinity}', "non_finite_price"),
        ('{"symbol": "A", "price": 1e400}', "non_finite_price"),
        ('{"symbol": "A", "price": 1' + "0" * 400 + "}", "non_finite_price"),
        ('{"symbol": "A", "price": 0}', "non_positive_price"),
        ('{"symbol": "A", "price": -0.0}', "non_positive_price"),
        ('{"type": "trade", "symbol": "A", "price": 1.0}', "unknown_type"),
        ("[" * 100_000, "bad_json"),
        (" " * (MAX_FRAME_CHARS + 1), "too_large"),
    ],
)
def test_each_malformed_kind_has_its_reason(frame: str, reason: str) -> None:
    parsed = parse_frame(frame, NOW)
    assert parsed.ticks == []
    assert parsed.rejects == {reason: 1}


def test_a_binary_frame_is_rejected_whole() -> None:
    parsed = parse_frame(b'{"symbol": "A", "price": 1.0}', NOW)
    assert parsed.ticks == []
    assert parsed.rejects == {"binary": 1}


@pytest.mark.parametrize("ts", ['"1767779056.1"', "NaN", "-1", "0", "false", "[]"])
def test_a18_a_malformed_ts_is_dropped_and_counted_and_the_price_kept(ts: str) -> None:
    """A18: `ts` decides nothing, so a bad one must not throw away a valid price."""
    parsed = parse_frame('{"symbol": "A", "price": 1.5, "ts": ' + ts + "}", NOW)
    assert parsed.ticks == [Tick("A", 1.5, NOW, None)]
    assert parsed.rejects == {"bad_ts": 1}


@pytest.mark.parametrize("sent", ["boschltd", " BOSCHLTD", "BOSCHLTD\t", " BoschLtd "])
def test_a12_feed_symbols_are_normalised_like_position_symbols(sent: str) -> None:
    """A12: a position's symbol is stripped and upper-cased; the feed's must match it."""
    parser = JsonProtocol("ws://feed.test/ws")
    for _ in range(2):  # the first sight of a symbol and the remembered one agree
        parsed = parser.parse([json.dumps({"symbol": sent, "price": 575.0})], NOW)
        assert parsed.ticks == [Tick(validate_symbol(sent), 575.0, NOW, None)]
        assert parsed.ticks[0].symbol == "BOSCHLTD"


def test_the_remembered_symbols_are_bounded() -> None:
    names: dict[str, str] = {}
    frames = [json.dumps({"symbol": f"S{i}", "price": 1.0}) for i in range(MAX_NAMES + 10)]
    assert len(parse_frames(frames, NOW, names).ticks) == MAX_NAMES + 10
    assert len(names) <= MAX_NAMES


def test_the_json_protocol_subscribes_with_one_text_frame_to_its_static_url() -> None:
    parser = JsonProtocol("wss://feed.test/ws")
    assert parser.target() == Target("wss://feed.test/ws")
    [frame] = parser.subscribe(["A", "B"])
    assert json.loads(frame) == {"action": "subscribe", "symbols": ["A", "B"]}
    assert PROTOCOLS["json"] is not None and {"json", "kite"} <= set(PROTOCOLS)


def test_a_frame_just_under_the_size_limit_is_parsed() -> None:
    tick = '{"symbol": "A", "price": 1.0}'
    frame = tick + " " * (MAX_FRAME_CHARS - len(tick))
    assert len(parse_frame(frame, NOW).ticks) == 1


def _check_invariants(data: str | bytes) -> None:
    parsed = parse_frame(data, NOW)
    for tick in parsed.ticks:
        assert valid_price(tick.price)
        assert tick.symbol and tick.symbol.isprintable()
        assert tick.received_at == NOW
        ts = tick.exchange_ts
        assert ts is None or (math.isfinite(ts) and ts > 0)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_arbitrary_text_never_raises(data: str) -> None:
    _check_invariants(data)


@settings(max_examples=100, deadline=None)
@given(st.binary())
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    _check_invariants(data)


_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    | st.sampled_from(["heartbeat", "BOSCHLTD", "subscribe"])
)
_keys = st.sampled_from(["symbol", "price", "ts", "type", "x"])
_json_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(_keys, children, max_size=5),
    max_leaves=12,
)
_tickish = st.fixed_dictionaries(
    {"symbol": st.text(max_size=6) | st.none() | st.integers(), "price": _scalars},
    optional={"ts": _scalars, "type": st.sampled_from(["heartbeat", "tick"])},
)


@settings(max_examples=300, deadline=None)
@given(_json_values)
def test_arbitrary_json_never_raises(value: object) -> None:
    _check_invariants(json.dumps(value))  # allow_nan: NaN and Infinity included


@settings(max_examples=300, deadline=None)
@given(st.lists(_tickish, max_size=8))
def test_every_array_element_is_kept_or_rejected_exactly_once(
    elements: list[dict[str, object]],
) -> None:
    parsed = parse_frame(json.dumps(elements), NOW)
    heartbeats = sum(1 for e in elements if e.get("type") == "heartbeat")
    dropped = sum(parsed.rejects.values()) - parsed.rejects["bad_ts"]  # a bad ts keeps the tick
    assert len(parsed.ticks) + dropped + heartbeats == len(elements)
    assert parsed.heartbeat == (heartbeats > 0)
