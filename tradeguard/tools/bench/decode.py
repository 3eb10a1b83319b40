"""`decode` in `tradeguard bench` (SPEC §2): TradeGuard's decoders against the official SDKs'.

`kite_full`: the same full-mode frames (50 packets of 184 bytes each, the
bench's 208 instruments, NSE tokens) decoded by `KiteFeed.parse` into ticks
and by pykiteconnect's own `KiteTicker._parse_binary` into its dicts. The
SDK comes from the `bench` extra (`pip install 'tradeguard[bench]'`); without
it the peer is reported missing and no ratio is given. Each side runs for
the same time, in this process, one after the other, best of three rounds.
"""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Callable
from typing import Any

from tradeguard.brokers.kite.ticker import KiteFeed

INSTRUMENTS = 208
PACKETS_PER_FRAME = 50
FRAMES = 200  # distinct frames, cycled
ROUNDS = 3
SEED = 20_260_107


class _Master:
    """The instrument lookup the decoder reads: `NSE:SYMnnn` <-> an NSE token (segment 1)."""

    def __init__(self) -> None:
        self.tokens = {f"NSE:SYM{i:03d}": (1000 + i) << 8 | 1 for i in range(INSTRUMENTS)}
        self.names = {t: s for s, t in self.tokens.items()}

    def token(self, symbol: str) -> int | None:
        return self.tokens.get(symbol)

    def symbol(self, token: int) -> str | None:
        return self.names.get(token)


def full_frames(tokens: list[int]) -> list[bytes]:
    """Frames of full packets as Kite sends them: every field, ten depth entries."""
    rng = random.Random(SEED)  # noqa: S311 - prices, not secrets
    frames = []
    for _ in range(FRAMES):
        packets = [_full_packet(rng.choice(tokens), rng.randrange(5_000, 500_000))
                   for _ in range(PACKETS_PER_FRAME)]
        frames.append(struct.pack(">H", len(packets))
                      + b"".join(struct.pack(">H", len(p)) + p for p in packets))
    return frames


def _full_packet(token: int, price: int) -> bytes:
    now = 1_767_779_056
    head = struct.pack(">IiIiIIIiiii", token, price, 10, price, 123_456, 1_000, 2_000,
                       price - 50, price + 100, price - 150, price - 20)
    times = struct.pack(">IIIII", now - 1, 0, 0, 0, now)
    depth = b"".join(struct.pack(">IiHxx", 5 + i, price - 5 * (i + 1), 1 + i) for i in range(10))
    return head + times + depth


def _rate(decode: Callable[[bytes], int], frames: list[bytes], seconds: float) -> float:
    """Ticks per second out of `decode` over `frames`, cycled for `seconds`, best round."""
    best = 0.0
    for _ in range(ROUNDS):
        ticks, started, deadline = 0, time.perf_counter(), time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            for data in frames:
                ticks += decode(data)
        best = max(best, ticks / (time.perf_counter() - started))
    return best


def _peer() -> Callable[[bytes], int] | str:
    """pykiteconnect's own parser, or why it is missing."""
    try:
        from kiteconnect import KiteTicker  # noqa: PLC0415 - the optional `bench` extra
    except ImportError as exc:
        return f"kiteconnect is not installed (pip install 'tradeguard[bench]'): {exc}"
    parse = KiteTicker("bench", "bench")._parse_binary  # the SDK's own parser
    return lambda data: len(parse(data))


def kite_full(seconds: float) -> dict[str, Any]:
    """The `decode.kite_full` object: both rates and their ratio (peer missing: null ratio)."""
    master = _Master()
    feed = KiteFeed("", "bench", lambda: "bench", master, "full")
    feed.target()
    feed.subscribe(sorted(master.tokens))
    frames = full_frames(sorted(master.names))
    ours = _rate(lambda data: len(feed.parse((data,), 0.0).ticks), frames, seconds)
    report: dict[str, Any] = {"tradeguard_ticks_per_s": round(ours), "peer_ticks_per_s": None,
                              "ratio": None, "peer": "pykiteconnect KiteTicker._parse_binary",
                              "packets_per_frame": PACKETS_PER_FRAME}
    peer = _peer()
    if isinstance(peer, str):
        report["missing"] = peer
        return report
    theirs = _rate(peer, frames, seconds)
    report.update(peer_ticks_per_s=round(theirs), ratio=round(ours / theirs, 2))
    return report


def measure(quick: bool) -> dict[str, Any]:
    """The bench's `decode` object."""
    return {"kite_full": kite_full(0.3 if quick else 2.0),
            "upstox_ltpc": {"tradeguard_ticks_per_s": None, "peer_ticks_per_s": None,
                            "ratio": None, "missing": "no Upstox decoder in this build"}}
