"""Typed configuration: defaults, TOML, environment overrides, validation.

Every key of SPEC §3 is a field of one of the section dataclasses below, with
its default. `load_config` reads TOML, applies `TRADEGUARD_<SECTION>_<KEY>`
environment overrides, and validates everything in one pass, so an operator
sees every problem at once, each named by its key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tradeguard.errors import ConfigError
from tradeguard.net.addresses import is_loopback as is_loopback  # noqa: PLC0414 - its callers
from tradeguard.net.addresses import parse_server

MASK = "********"
SECRETS = frozenset({("api", "token"), ("broker", "token"), ("telegram", "bot_token")})
ENV_PREFIX = "TRADEGUARD_"


@dataclasses.dataclass(frozen=True)
class FeedConfig:
    url: str = ""
    protocol: str = "json"
    symbols: list[str] = dataclasses.field(default_factory=list)
    ca_file: str = ""
    connect_timeout: float = 10.0  # seed CONNECTION_RETRY_TIMEOUT
    reconnect_initial_delay: float = 1.0
    reconnect_max_delay: float = 60.0
    reconnect_jitter: float = 0.5  # seed WEBSOCKET_RECONNECT_JITTER
    stable_after: float = 10.0
    ping_interval: float = 10.0
    ping_timeout: float = 5.0
    silence_timeout: float = 15.0
    dns_check_every: int = 3


@dataclasses.dataclass(frozen=True)
class DnsConfig:
    fallback_servers: list[str] = dataclasses.field(
        default_factory=lambda: ["8.8.8.8", "1.1.1.1", "8.8.4.4", "1.0.0.1"]
    )  # seed DNS_FALLBACK_SERVERS
    timeout: float = 5.0  # seed DNS_TIMEOUT
    system_head_start: float = 0.2
    health_interval: float = 30.0
    serve_stale: bool = True


@dataclasses.dataclass(frozen=True)
class PricesConfig:
    cache_timeout: float = 300.0  # seed PRICE_CACHE_TIMEOUT
    stale_warning_threshold: float = 30.0  # seed STALE_PRICE_WARNING_THRESHOLD


@dataclasses.dataclass(frozen=True)
class MonitorConfig:
    sweep_interval: float = 1.0
    max_close_retries: int = 3  # seed MAX_POSITION_MONITORING_RETRIES
    blind_policy: str = "alert"


@dataclasses.dataclass(frozen=True)
class BrokerConfig:
    kind: str = "paper"
    url: str = ""
    token: str = ""
    timeout: float = 5.0


@dataclasses.dataclass(frozen=True)
class ApiConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    token: str = ""


@dataclasses.dataclass(frozen=True)
class TelegramConfig:
    bot_token: str = ""
    chat_id: str = ""
    api_base: str = "https://api.telegram.org"
    max_per_minute: int = 20


@dataclasses.dataclass(frozen=True)
class StoreConfig:
    path: str = "tradeguard.db"


@dataclasses.dataclass(frozen=True)
class SupervisorConfig:
    max_restarts: int = 5
    within_seconds: float = 30.0
    restart_backoff_min: float = 0.1
    restart_backoff_max: float = 5.0
    liveness_interval: float = 5.0
    liveness_timeout: float = 2.0


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


def _type_name(kind: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        kind, "a list of strings"
    )


def _coerce(value: Any, kind: Any) -> Any:
    """Check a TOML value against a field type; raise ValueError if it does not fit."""
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # TOML integers are unbounded
                raise ValueError("must be a finite number") from None
            if not math.isfinite(number):
                raise ValueError("must be a finite number")
            return number
    elif kind is str:
        if isinstance(value, str):
            return value
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"must be {_type_name(kind)}, got {type(value).__name__} {value!r}")


def _from_env_text(text: str, kind: Any) -> Any:
    """Parse an environment variable's text as the field type wants."""
    text = text.strip()
    if kind is bool:
        lowered = text.lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"must be true or false, got {text!r}")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"must be an integer, got {text!r}") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"must be a number, got {text!r}") from None
    if kind is str:
        return text
    return [item.strip() for item in text.split(",") if item.strip()]


def _suggest(word: str, choices: list[str]) -> str:
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _merge_env(
    raw: dict[str, dict[str, Any]], env: Mapping[str, str], problems: list[str]
) -> None:
    sections = _sections()
    for name, text in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        if rest == "config":
            continue
        section = next((s for s in sections if rest.startswith(s + "_")), None)
        if section is None:
            guess = rest.partition("_")[0]
            problems.append(f"{name}: no such section{_suggest(guess, list(sections))}")
            continue
        key = rest[len(section) + 1 :]
        keys = _keys(sections[section])
        if key not in keys:
            problems.append(f"{name}: {section} has no key {key!r}{_suggest(key, list(keys))}")
            continue
        table = raw.setdefault(section, {})
        if not isinstance(table, dict):
            continue  # _build reports the section that is not a table
        try:
            table[key] = _from_env_text(text, keys[key])
        except ValueError as exc:
            problems.append(f"{section}.{key} (from {name}): {exc}")


def _build(raw: Mapping[str, Any], problems: list[str]) -> Config:
    sections = _sections()
    built: dict[str, Any] = {}
    for section, table in raw.items():
        if section not in sections:
            problems.append(f"[{section}]: unknown section{_suggest(section, list(sections))}")
            continue
        if not isinstance(table, dict):
            problems.append(f"[{section}]: must be a table of keys")
            continue
        keys = _keys(sections[section])
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in keys:
                problems.append(f"{section}.{key}: unknown key{_suggest(key, list(keys))}")
                continue
            try:
                values[key] = _coerce(value, keys[key])
            except ValueError as exc:
                # the error text quotes the value, which a secret's must never be
                secret = (section, key) in SECRETS
                detail = f"must be {_type_name(keys[key])}" if secret else str(exc)
                problems.append(f"{section}.{key}: {detail}")
        built[section] = sections[section](**values)
    return Config(**built)


def _check_url(key: str, url: str, schemes: tuple[str, ...], problems: list[str]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.hostname:
        problems.append(f"{key}: must be a {' or '.join(s + '://' for s in schemes)} URL")
        return
    try:
        _ = parts.port
    except ValueError:
        problems.append(f"{key}: bad port in {url!r}")


def _check_ranges(cfg: Config, problems: list[str]) -> None:  # noqa: PLR0912
    positive = {
        "feed": ("connect_timeout", "reconnect_initial_delay", "reconnect_max_delay",
                 "ping_interval", "ping_timeout", "silence_timeout", "dns_check_every"),
        "dns": ("timeout", "health_interval"),
        "prices": ("cache_timeout", "stale_warning_threshold"),
        "monitor": ("sweep_interval",),
        "broker": ("timeout",),
        "telegram": ("max_per_minute",),
        "supervisor": ("within_seconds", "restart_backoff_min", "restart_backoff_max",
                       "liveness_interval", "liveness_timeout"),
    }
    for section, keys in positive.items():
        for key in keys:
            if getattr(getattr(cfg, section), key) <= 0:
                problems.append(f"{section}.{key}: must be greater than 0")
    non_negative = [("feed", "reconnect_jitter"), ("feed", "stable_after"),
                    ("dns", "system_head_start"), ("monitor", "max_close_retries"),
                    ("supervisor", "max_restarts")]
    for section, key in non_negative:
        if getattr(getattr(cfg, section), key) < 0:
            problems.append(f"{section}.{key}: must not be negative")
    feed = cfg.feed
    if feed.url:
        _check_url("feed.url", feed.url, ("ws", "wss"), problems)
    if feed.protocol != "json":
        problems.append(f"feed.protocol: unknown protocol {feed.protocol!r} (known: 'json')")
    if feed.ca_file and not Path(feed.ca_file).is_file():
        problems.append(f"feed.ca_file: no such file {feed.ca_file!r}")
    if feed.ping_timeout >= feed.ping_interval:
        problems.append("feed.ping_timeout: must be less than feed.ping_interval")
    if feed.reconnect_initial_delay > feed.reconnect_max_delay:
        problems.append("feed.reconnect_initial_delay: must not exceed feed.reconnect_max_delay")
    for server in cfg.dns.fallback_servers:
        try:
            parse_server(server)
        except ValueError:
            problems.append(f"dns.fallback_servers: {server!r} is not an ip or ip:port")
    if cfg.prices.stale_warning_threshold > cfg.prices.cache_timeout:
        problems.append("prices.stale_warning_threshold: must not exceed prices.cache_timeout")
    if cfg.monitor.blind_policy not in {"alert", "close"}:
        problems.append("monitor.blind_policy: must be 'alert' or 'close'")
    if cfg.broker.kind not in {"paper", "http"}:
        problems.append("broker.kind: must be 'paper' or 'http'")
    if cfg.broker.kind == "http":
        _check_url("broker.url", cfg.broker.url, ("http", "https"), problems)
    if not 0 < cfg.api.port < 65536:
        problems.append(f"api.port: {cfg.api.port} is not a TCP port (1-65535)")
    _check_url("telegram.api_base", cfg.telegram.api_base, ("http", "https"), problems)
    if cfg.telegram.bot_token and not cfg.telegram.chat_id:
        problems.append("telegram.chat_id: required when telegram.bot_token is set")
    if not cfg.store.path:
        problems.append("store.path: must not be empty")
    sup = cfg.supervisor
    if sup.restart_backoff_min > sup.restart_backoff_max:
        problems.append("supervisor.restart_backoff_min: must not exceed restart_backoff_max")
    if sup.liveness_timeout >= sup.liveness_interval:
        problems.append("supervisor.liveness_timeout: must be less than liveness_interval")


def config_from_mapping(
    raw: Mapping[str, Any], env: Mapping[str, str] | None = None, *, require_feed: bool = False
) -> Config:
    """Validate a parsed TOML mapping (plus environment overrides) into a Config."""
    problems: list[str] = []
    merged: dict[str, Any] = {
        k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()
    }
    _merge_env(merged, env if env is not None else {}, problems)
    cfg = _build(merged, problems)
    _check_ranges(cfg, problems)
    if require_feed and not cfg.feed.url:
        problems.append("feed.url: required (a ws:// or wss:// URL)")
    if problems:
        raise ConfigError(problems)
    return cfg


def load_config(
    path: str | Path | None,
    env: Mapping[str, str] | None = None,
    *,
    require_feed: bool = False,
) -> Config:
    """Read, merge and validate a configuration; raise ConfigError with every problem."""
    environ = os.environ if env is None else env
    if path is None:
        path = environ.get("TRADEGUARD_CONFIG")
    raw: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError([f"{path}: not valid TOML ({exc})"]) from exc
    return config_from_mapping(raw, environ, require_feed=require_feed)


def masked(cfg: Config) -> dict[str, dict[str, Any]]:
    """The effective configuration as plain data, secrets replaced by a mask."""
    out: dict[str, dict[str, Any]] = {}
    for section in _sections():
        values = dataclasses.asdict(getattr(cfg, section))
        for key, value in values.items():
            if (section, key) in SECRETS and value:
                values[key] = MASK
        out[section] = values
    return out


def render_toml(data: Mapping[str, Mapping[str, Any]]) -> str:
    """Render plain config data as TOML text (for check-config)."""
    lines: list[str] = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + "".join(_toml_char(c) for c in str(value)) + '"'


def _toml_char(char: str) -> str:
    """A character as TOML allows it in a basic string (no raw controls or DEL)."""
    if char in '"\\':
        return "\\" + char
    if (char < " " and char != "\t") or char == "\x7f":
        return f"\\u{ord(char):04x}"
    return char
