"""The price feed: the seam between one WebSocket transport and the wire formats over it.

`connection.FeedConnection` is the transport: it speaks WebSocket (opcodes,
fragments, pings, close) and hands back data frames, text as `str` and binary
as `bytes`. A `FeedProtocol` is everything venue-specific: where to connect
(asked again before every connect, because a venue may hand out a one-time
URL over REST first), which frames subscribe a set of symbols, and how data
frames become ticks. `PROTOCOLS` maps each `feed.protocol` name to a factory;
config validation and the feed actor both read it, so a new venue is one entry.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tradeguard.prices import Tick

if TYPE_CHECKING:
    from tradeguard.config import Config

Frame = str | bytes  # a data frame: TEXT as str, BINARY as bytes


@dataclass(frozen=True, slots=True)
class Target:
    """Where one connection goes: a ws(s) URL and any extra handshake headers.

    The URL may carry credentials (Kite puts the access token in the query),
    so it is never logged; log the hostname.
    """

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Parsed:
    """What frames received together held.

    `rejects` counts each dropped part (a frame, an element of one, or a bad
    optional field) by reason code; `messages` holds what is neither a tick
    nor a heartbeat but matters to someone (a venue's order updates).
    """

    ticks: list[Tick] = field(default_factory=list)
    rejects: Counter[str] = field(default_factory=Counter)
    heartbeat: bool = False
    messages: list[object] = field(default_factory=list)


class FeedProtocol(Protocol):
    """One wire format. Parsing never raises: what is wrong becomes a reject reason."""

    @property
    def max_frame_bytes(self) -> int:
        """The largest message the transport may buffer for this format."""
        ...

    def target(self) -> Target:
        """Where to connect now; called before every connect. FeedError if unknown."""
        ...

    def subscribe(self, symbols: Sequence[str]) -> list[Frame]:
        """The frames that subscribe `symbols` (sent after every connect, and for additions)."""
        ...

    def parse(self, frames: Iterable[Frame], received_at: float) -> Parsed:
        """Ticks (stamped `received_at`, time.monotonic()), rejects and other messages."""
        ...

    # A feed that refuses the credentials at the handshake (TokenRejected) is
    # not asked again with the same ones (SPEC §12): the feed actor watches
    # `credential()` and reconnects as soon as it changes.

    def credential(self) -> str:
        """A fingerprint of the credentials target() would use now (cheap, no I/O, no secret)."""
        ...

    def token_rejected(self) -> bool:
        """The last target's credentials were refused: True if that is news (one alert)."""
        ...

    def token_accepted(self) -> bool:
        """A connection opened: True if its credentials had been refused (say they work again)."""
        ...


# (config, venue): a venue's protocol comes from its venue object (tradeguard.brokers.Venue),
# which shares the token and the instrument master with its broker.
ProtocolFactory = Callable[["Config", Any], FeedProtocol]


def _json(cfg: Config, venue: Any = None) -> FeedProtocol:
    from tradeguard.feed.wire_json import JsonProtocol  # noqa: PLC0415 - it imports this module

    return JsonProtocol(cfg.feed.url)


def _from_venue(cfg: Config, venue: Any = None) -> FeedProtocol:
    from tradeguard.errors import FeedError  # noqa: PLC0415 - keeps this module's imports few

    if venue is None:
        raise FeedError(f"feed.protocol {cfg.feed.protocol!r} is built by its venue "
                        "(tradeguard.brokers.make_venue) and none was given")
    protocol: FeedProtocol = venue.feed_protocol()
    return protocol


PROTOCOLS: dict[str, ProtocolFactory] = {"json": _json, "kite": _from_venue}


def make_protocol(cfg: Config, venue: Any = None) -> FeedProtocol:
    """The protocol `feed.protocol` names (config validation has checked the name)."""
    return PROTOCOLS[cfg.feed.protocol](cfg, venue)


__all__ = ["PROTOCOLS", "FeedProtocol", "Frame", "Parsed", "Target", "make_protocol"]
