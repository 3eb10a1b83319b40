"""The frame cutter on its own: bytes in, data frames out, control frames answered."""

from __future__ import annotations

import pytest

from tests.test_feed_connection import any_frame as frame
from tradeguard.errors import FeedError
from tradeguard.feed import Frame
from tradeguard.feed.frames import BINARY, PING, PONG, TEXT, FrameCutter

BIG = 1 << 30


def cutter(limit: int = 100) -> tuple[FrameCutter, list[tuple[bytes, int]]]:
    sent: list[tuple[bytes, int]] = []
    return FrameCutter(lambda data, opcode: sent.append((data, opcode)), limit), sent


def take(c: FrameCutter, data: bytes) -> list[Frame]:
    batch: list[Frame] = []
    c.append(data)
    c.take(batch, 1000, BIG)
    return batch


def test_a_frame_cut_anywhere_comes_out_whole_once_complete() -> None:
    c, _ = cutter()
    data = frame(TEXT, b'"one"') + frame(BINARY, b"\x01\x02")
    for i in range(len(data) - 1):
        assert take(c, data[i:i + 1]) == ([] if i < 6 else ['"one"'] if i == 6 else [])
    assert take(c, data[-1:]) == [b"\x01\x02"]


def test_pings_are_answered_and_pongs_counted_never_returned() -> None:
    c, sent = cutter()
    assert take(c, frame(PING, b"hi") + frame(PONG, b"") + frame(TEXT, b"1")) == ["1"]
    assert sent == [(b"hi", PONG)]
    assert c.pongs == 1


def test_a_close_is_echoed_and_raised() -> None:
    c, sent = cutter()
    with pytest.raises(FeedError, match="feed closed the connection: 1001 bye"):
        take(c, frame(0x8, b"\x03\xe9bye"))
    assert sent == [(b"\x03\xe9", 0x8)]


def test_c10_an_oversized_frame_arriving_in_pieces_is_never_held() -> None:
    """C10: the payload of a refused frame is dropped as it arrives; what follows is kept."""
    c, _ = cutter(limit=100)
    assert take(c, frame(TEXT, b"", length=10_000)) == []
    assert c.take_refused() == 1
    for _ in range(99):
        assert take(c, b"x" * 100) == []
        assert len(c._data) == 0  # the point: nothing of it is kept
    assert take(c, b"x" * 100 + frame(TEXT, b"after")) == ["after"]
    assert c.take_refused() == 0


def test_the_batch_budget_leaves_the_rest_for_later() -> None:
    c, _ = cutter()
    c.append(b"".join(frame(TEXT, b"%d" % i) for i in range(10)))
    batch: list[Frame] = []
    assert c.take(batch, 1000, 9) == 9  # three 3-byte frames
    assert batch == ["0", "1", "2"]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (bytes([0x81, 0x81]) + b"mask", "masked"),
        (bytes([0xC1, 0]), "reserved bits"),
        (frame(0x0, b"x"), "no message to continue"),
        (frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"), "inside a fragmented one"),
        (frame(PING, b"x", fin=False), "control frame"),
        (frame(0x3, b""), "unknown opcode 3"),
        (frame(TEXT, b"\xff"), "not UTF-8"),
    ],
)
def test_protocol_violations_fail_the_connection(data: bytes, error: str) -> None:
    c, _ = cutter()
    with pytest.raises(FeedError, match=error):
        take(c, data)
