"""Every key of SPEC §3: one dataclass per section, each field with its default and Rule."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

from tradeguard.config._rules import Rule, key, rule_of

MAX_CLOSE_RETRIES = 20  # each round of retries holds a close open for seconds
MIN_API_TOKEN = 16  # characters; a shorter configured token is guessable (finding D6)

BlindPolicy = Literal["alert", "close"]
BrokerKind = Literal["paper", "http", "kite", "upstox"]  # SPEC §3; tradeguard.brokers.KINDS builds
FeedProtocolName = Literal["json", "kite", "upstox"]  # SPEC §3; tradeguard.feed.PROTOCOLS parses
# feed.mode by feed.protocol (SPEC §3; kite: tradeguard.brokers.kite.protocol.MODES); "" is the
# protocol's default (kite "ltp", upstox "ltpc"), and the only value json takes.
FEED_MODES: dict[str, tuple[str, ...]] = {"json": (), "kite": ("ltp", "quote", "full"),
                                          "upstox": ("ltpc", "full")}
Product = Literal["MIS", "CNC", "NRML", "MTF", "I", "D"]  # SPEC §3: Kite's or Upstox's names



@dataclasses.dataclass(frozen=True)
class FeedConfig:
    url: str = key("", url=("ws", "wss"))
    protocol: FeedProtocolName = key(  # noqa: RUF009 - key() is a dataclasses.field
        "json", registry="tradeguard.feed:PROTOCOLS")
    mode: str = ""  # FEED_MODES[protocol]; checked in _load._check_relations
    symbols: tuple[str, ...] = ()
    ca_file: str = ""
    connect_timeout: float = key(10.0, above=0)  # seed CONNECTION_RETRY_TIMEOUT
    reconnect_initial_delay: float = key(1.0, above=0)
    reconnect_max_delay: float = key(60.0, above=0)
    reconnect_jitter: float = key(0.5, at_least=0)  # seed WEBSOCKET_RECONNECT_JITTER
    stable_after: float = key(10.0, at_least=0)
    ping_interval: float = key(10.0, above=0)
    ping_timeout: float = key(5.0, above=0)
    silence_timeout: float = key(15.0, above=0)
    dns_check_every: int = key(3, above=0)


@dataclasses.dataclass(frozen=True)
class DnsConfig:
    fallback_servers: tuple[str, ...] = ("8.8.8.8", "1.1.1.1", "8.8.4.4", "1.0.0.1")  # seed
    timeout: float = key(5.0, above=0)  # seed DNS_TIMEOUT
    system_head_start: float = key(0.2, at_least=0)
    health_interval: float = key(30.0, above=0)
    serve_stale: bool = True


@dataclasses.dataclass(frozen=True)
class PricesConfig:
    cache_timeout: float = key(300.0, above=0)  # seed PRICE_CACHE_TIMEOUT
    stale_warning_threshold: float = key(30.0, above=0)  # seed STALE_PRICE_WARNING_THRESHOLD


@dataclasses.dataclass(frozen=True)
class MonitorConfig:
    sweep_interval: float = key(1.0, above=0)
    max_close_retries: int = key(3, at_least=0, at_most=MAX_CLOSE_RETRIES)  # seed
    blind_policy: BlindPolicy = "alert"


@dataclasses.dataclass(frozen=True)
class BrokerConfig:
    kind: BrokerKind = key(  # noqa: RUF009 - key() is a dataclasses.field
        "paper", registry="tradeguard.brokers:KINDS")
    url: str = key("", url=("http", "https"))  # kite: "" is https://api.kite.trade
    instruments_url: str = key("", url=("http", "https"))  # kite: "" is <url>/instruments
    api_key: str = ""  # kite: the app's api_key
    token: str = key("", secret=True)
    token_file: str = ""  # holds the access token instead; read again when it changes, SIGHUP
    ca_file: str = ""  # extra CA bundle for https broker calls
    timeout: float = key(5.0, above=0)
    market_protection: int = key(-1, at_least=-1, at_most=100)  # kite MARKET closes; 0 refused
    product: Product = "MIS"  # of a position that names none (tradeguard.positions.PRODUCTS)


@dataclasses.dataclass(frozen=True)
class ApiConfig:
    host: str = "127.0.0.1"
    port: int = key(8080, port=True)
    token: str = key("", secret=True, min_length=MIN_API_TOKEN)


@dataclasses.dataclass(frozen=True)
class TelegramConfig:
    bot_token: str = key("", secret=True)
    chat_id: str = ""
    api_base: str = key("https://api.telegram.org", url=("http", "https"))
    max_per_minute: int = key(20, above=0)


@dataclasses.dataclass(frozen=True)
class StoreConfig:
    path: str = "tradeguard.db"  # made absolute by load_config (finding B3)


DEFAULT_SESSIONS = {  # SPEC §3 [market.sessions]: exchange -> "HH:MM-HH:MM" or "always"
    "NSE": "09:15-15:30", "BSE": "09:15-15:30", "NFO": "09:15-15:30", "BFO": "09:15-15:30",
    "CDS": "09:00-17:00", "MCX": "09:00-23:30",
}


@dataclasses.dataclass(frozen=True)
class MarketConfig:
    """SPEC §14. A `[market.sessions]` table adds to (or changes) the default exchanges."""

    timezone: str = "Asia/Kolkata"
    default_exchange: str = ""
    holidays: tuple[str, ...] = ()
    square_off: str = ""
    sessions: dict[str, str] = dataclasses.field(default_factory=lambda: dict(DEFAULT_SESSIONS))

    def __post_init__(self) -> None:
        given = {name.strip().upper(): text for name, text in self.sessions.items()}
        object.__setattr__(self, "sessions", {**DEFAULT_SESSIONS, **given})


@dataclasses.dataclass(frozen=True)
class SupervisorConfig:
    max_restarts: int = key(5, at_least=0)
    within_seconds: float = key(30.0, above=0)
    restart_backoff_min: float = key(0.1, above=0)
    restart_backoff_max: float = key(5.0, above=0)
    liveness_interval: float = key(5.0, above=0)
    liveness_timeout: float = key(2.0, above=0)


@dataclasses.dataclass(frozen=True)
class DisplayConfig:
    currency: str = "₹"


@dataclasses.dataclass(frozen=True)
class DebugConfig:
    fault_injection: bool = False


@dataclasses.dataclass(frozen=True)
class Config:
    feed: FeedConfig = dataclasses.field(default_factory=FeedConfig)
    dns: DnsConfig = dataclasses.field(default_factory=DnsConfig)
    prices: PricesConfig = dataclasses.field(default_factory=PricesConfig)
    monitor: MonitorConfig = dataclasses.field(default_factory=MonitorConfig)
    broker: BrokerConfig = dataclasses.field(default_factory=BrokerConfig)
    api: ApiConfig = dataclasses.field(default_factory=ApiConfig)
    telegram: TelegramConfig = dataclasses.field(default_factory=TelegramConfig)
    store: StoreConfig = dataclasses.field(default_factory=StoreConfig)
    market: MarketConfig = dataclasses.field(default_factory=MarketConfig)
    supervisor: SupervisorConfig = dataclasses.field(default_factory=SupervisorConfig)
    display: DisplayConfig = dataclasses.field(default_factory=DisplayConfig)
    debug: DebugConfig = dataclasses.field(default_factory=DebugConfig)

    def replace(self, section: str, **values: Any) -> Config:
        """A copy with some keys of one section changed (tests, the demo)."""
        updated = dataclasses.replace(getattr(self, section), **values)
        return dataclasses.replace(self, **{section: updated})


def _sections() -> dict[str, type[Any]]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def _keys(section_cls: type[Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def _rules(section_cls: type[Any]) -> dict[str, Rule]:
    return {f.name: rule_of(f) for f in dataclasses.fields(section_cls)}
