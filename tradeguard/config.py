"""Typed configuration: defaults, TOML, environment overrides, validation.

Every key of SPEC §3 is a field of one of the section dataclasses below, with
its default and, where it has one, its `Rule` (a bound, a secret, a URL's
schemes, the registry a name must be in), so a rule cannot drift from its key.
`load_config` reads TOML, applies `TRADEGUARD_<SECTION>_<KEY>` environment
overrides, and validates everything in one pass, so an operator sees every
problem at once, each named by its key. Rules between keys are in
`_check_relations`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import logging
import math
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tradeguard.errors import ConfigError
from tradeguard.net.addresses import parse_server

MASK = "********"
ENV_PREFIX = "TRADEGUARD_"
MAX_CLOSE_RETRIES = 20  # each round of retries holds a close open for seconds
MIN_API_TOKEN = 16  # characters; a shorter configured token is guessable (finding D6)

logger = logging.getLogger(__name__)

BlindPolicy = Literal["alert", "close"]
BrokerKind = Literal["paper", "http", "kite", "upstox"]  # SPEC §3; tradeguard.brokers.KINDS builds
FeedProtocolName = Literal["json", "kite", "upstox"]  # SPEC §3; tradeguard.feed.PROTOCOLS parses


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a key's value must be, beyond its type (Mopidy's `Integer(minimum=1)`, `Secret()`).

    `above` / `at_least` / `at_most` bound a number; `secret` masks the value in
    every printout and keeps it out of every error; `url` names the schemes a
    URL may have (and masks its credentials when printed); `registry` names the
    dotted registry the value must be a key of; `port` is a TCP port.
    """

    above: float | None = None
    at_least: float | None = None
    at_most: float | None = None
    secret: bool = False
    url: tuple[str, ...] = ()
    registry: str = ""
    port: bool = False
    min_length: int = 0

    def problems(self, key: str, value: Any) -> list[str]:
        found: list[str] = []
        if self.above is not None and value <= self.above:
            found.append(f"{key}: must be greater than {self.above:g}")
        if self.at_least is not None and value < self.at_least:
            found.append(f"{key}: must not be negative" if self.at_least == 0
                         else f"{key}: must be at least {self.at_least:g}")
        if self.at_most is not None and value > self.at_most:
            found.append(f"{key}: must be at most {self.at_most:g}")
        if self.port and not 0 < value < 65536:
            found.append(f"{key}: {value} is not a TCP port (1-65535)")
        if self.min_length and value and len(value) < self.min_length:
            found.append(f"{key}: must be at least {self.min_length} characters")
        if self.url and value:
            found += _url_problems(key, value, self.url)
        if self.registry:
            found += _registry_problems(key, value, self.registry)
        return found


def key(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING,
        **rule: Any) -> Any:
    """A config key: its default and its `Rule`."""
    return dataclasses.field(default=default, default_factory=factory,
                             metadata={"rule": Rule(**rule)})


def rule_of(f: dataclasses.Field[Any]) -> Rule:
    found = f.metadata.get("rule")
    return found if isinstance(found, Rule) else Rule()


@dataclasses.dataclass(frozen=True)
class FeedConfig:
    url: str = key("", url=("ws", "wss"))
    protocol: FeedProtocolName = key(  # noqa: RUF009 - key() is a dataclasses.field
        "json", registry="tradeguard.feed:PROTOCOLS")
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
    url: str = key("", url=("http", "https"))
    token: str = key("", secret=True)
    timeout: float = key(5.0, above=0)


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


def _base(kind: Any) -> Any:
    """The plain type behind a field's annotation: a Literal of strings is a str."""
    return str if typing.get_origin(kind) is Literal else kind


def _type_name(kind: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        _base(kind), "a list of strings"
    )


def _coerce(value: Any, kind: Any) -> Any:
    """Check a TOML value against a field type; raise ValueError if it does not fit."""
    kind = _base(kind)
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return _finite(value)
    elif kind is str:
        if isinstance(value, str):
            return value
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"must be {_type_name(kind)}, got {type(value).__name__} {value!r}")


def _finite(value: float) -> float:
    try:
        number = float(value)
    except OverflowError:  # TOML integers are unbounded
        raise ValueError("must be a finite number") from None
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    return number


def _from_env_text(text: str, kind: Any) -> Any:
    """Parse an environment variable's text as the field type wants."""
    text, kind = text.strip(), _base(kind)
    if kind is bool:
        lowered = text.lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"must be true or false, got {text!r}")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"must be {_type_name(kind)}, got {text!r}") from None
    if kind is str:
        return text
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _suggest(word: str, choices: list[str]) -> str:
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _merge_env(
    raw: dict[str, dict[str, Any]], env: Mapping[str, str], problems: list[str]
) -> None:
    """Apply TRADEGUARD_<SECTION>_<KEY> variables to `raw`.

    A variable whose name starts with no section (TRADEGUARD_HOME, _VERSION:
    a deployment tool's own) is not ours: a warning, not a refusal to start
    (finding C13). One that names a section but no key of it is an error.
    """
    sections = _sections()
    for name, text in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name == "TRADEGUARD_CONFIG":
            continue
        rest = name[len(ENV_PREFIX):].lower()
        section = next((s for s in sections if rest.startswith(s + "_")), None)
        if section is None:
            guess = rest.partition("_")[0]
            logger.warning("%s: ignored, no config section %r%s", name, guess,
                           _suggest(guess, list(sections)))
            continue
        _merge_one(raw, name, section, rest[len(section) + 1:], text=text, problems=problems)


def _merge_one(raw: dict[str, dict[str, Any]], name: str, section: str, key_name: str, *,
               text: str, problems: list[str]) -> None:
    keys = _keys(_sections()[section])
    if key_name not in keys:
        problems.append(f"{name}: {section} has no key {key_name!r}"
                        f"{_suggest(key_name, list(keys))}")
        return
    table = raw.setdefault(section, {})
    if not isinstance(table, dict):
        return  # _build reports the section that is not a table
    try:
        table[key_name] = _from_env_text(text, keys[key_name])
    except ValueError as exc:
        detail = f"must be {_type_name(keys[key_name])}" if _is_secret(section, key_name) \
            else str(exc)
        problems.append(f"{section}.{key_name} (from {name}): {detail}")


def _is_secret(section: str, key_name: str) -> bool:
    return _rules(_sections()[section])[key_name].secret


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
        built[section] = sections[section](**_section_values(section, table, problems))
    return Config(**built)


def _section_values(section: str, table: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
    keys = _keys(_sections()[section])
    values: dict[str, Any] = {}
    for key_name, value in table.items():
        if key_name not in keys:
            problems.append(f"{section}.{key_name}: unknown key{_suggest(key_name, list(keys))}")
            continue
        try:
            values[key_name] = _coerce(value, keys[key_name])
        except ValueError as exc:
            # the error text quotes the value, which a secret's must never be
            detail = f"must be {_type_name(keys[key_name])}" if _is_secret(section, key_name) \
                else str(exc)
            problems.append(f"{section}.{key_name}: {detail}")
    return values


def _url_problems(key_name: str, url: str, schemes: tuple[str, ...]) -> list[str]:
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.hostname:
        return [f"{key_name}: must be a {' or '.join(s + '://' for s in schemes)} URL"]
    try:
        _ = parts.port
    except ValueError:
        return [f"{key_name}: bad port in {mask_url(url)!r}"]
    return []


def registry(dotted: str) -> tuple[str, ...]:
    """The names in a registry such as "tradeguard.brokers:KINDS" (imported when asked)."""
    module_name, _, attribute = dotted.partition(":")
    # Imported here, not at the top: the registries' modules import this one.
    return tuple(sorted(getattr(importlib.import_module(module_name), attribute)))


def _registry_problems(key_name: str, value: str, dotted: str) -> list[str]:
    names = registry(dotted)
    if value in names:
        return []
    return [f"{key_name}: unknown {key_name.rpartition('.')[2]} {value!r} "
            f"(known: {', '.join(repr(n) for n in names)})"]


def _literal_problems(key_name: str, value: Any, kind: Any) -> list[str]:
    if typing.get_origin(kind) is not Literal or value in typing.get_args(kind):
        return []
    return [f"{key_name}: must be {' or '.join(repr(a) for a in typing.get_args(kind))}"]


def _check_fields(cfg: Config, problems: list[str]) -> None:
    """Every key's own Rule (and Literal), section by section."""
    for section, cls in _sections().items():
        values, kinds = getattr(cfg, section), _keys(cls)
        for key_name, rule in _rules(cls).items():
            value, where = getattr(values, key_name), f"{section}.{key_name}"
            if rule.registry:
                problems += rule.problems(where, value)
                continue
            problems += _literal_problems(where, value, kinds[key_name]) or \
                rule.problems(where, value)


def _check_relations(cfg: Config, problems: list[str]) -> None:
    """The rules between keys, and those a single Rule cannot say."""
    feed, sup = cfg.feed, cfg.supervisor
    rules = [
        (feed.ping_timeout >= feed.ping_interval,
         "feed.ping_timeout: must be less than feed.ping_interval"),
        (feed.reconnect_initial_delay > feed.reconnect_max_delay,
         "feed.reconnect_initial_delay: must not exceed feed.reconnect_max_delay"),
        (cfg.prices.stale_warning_threshold > cfg.prices.cache_timeout,
         "prices.stale_warning_threshold: must not exceed prices.cache_timeout"),
        (cfg.broker.kind == "http" and not cfg.broker.url,
         "broker.url: must be a http:// or https:// URL"),
        (bool(cfg.telegram.bot_token) and not cfg.telegram.chat_id,
         "telegram.chat_id: required when telegram.bot_token is set"),
        (not cfg.store.path, "store.path: must not be empty"),
        (cfg.store.path == ":memory:",
         "store.path: ':memory:' is not durable: positions and close claims must survive "
         "a restart (give a file path)"),
        (sup.restart_backoff_min > sup.restart_backoff_max,
         "supervisor.restart_backoff_min: must not exceed restart_backoff_max"),
        (sup.liveness_timeout >= sup.liveness_interval,
         "supervisor.liveness_timeout: must be less than liveness_interval"),
    ]
    problems += [text for broken, text in rules if broken]
    if not cfg.telegram.api_base:
        problems.append("telegram.api_base: must be a http:// or https:// URL")
    if feed.ca_file and not Path(feed.ca_file).is_file():
        problems.append(f"feed.ca_file: no such file {feed.ca_file!r}")
    for server in cfg.dns.fallback_servers:
        try:
            parse_server(server)
        except ValueError:
            problems.append(f"dns.fallback_servers: {server!r} is not an ip or ip:port")


def config_from_mapping(
    raw: Mapping[str, Any], env: Mapping[str, str] | None = None, *, require_feed: bool = False,
    base_dir: str | Path | None = None,
) -> Config:
    """Validate a parsed TOML mapping (plus environment overrides) into a Config.

    A relative `store.path` is made absolute against `base_dir` (the config
    file's folder, when there is one), so the store does not move with the
    directory TradeGuard happens to be started from (finding B3).
    """
    problems: list[str] = []
    merged: dict[str, Any] = {
        k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()
    }
    _merge_env(merged, env if env is not None else {}, problems)
    cfg = _build(merged, problems)
    _check_fields(cfg, problems)
    _check_relations(cfg, problems)
    if require_feed and not cfg.feed.url:
        problems.append("feed.url: required (a ws:// or wss:// URL)")
    if problems:
        raise ConfigError(problems)
    return cfg if base_dir is None else _anchor_store(cfg, Path(base_dir))


def _anchor_store(cfg: Config, base_dir: Path) -> Config:
    path = Path(cfg.store.path).expanduser()
    if path.is_absolute():
        return cfg
    return cfg.replace("store", path=str((base_dir / path).absolute()))


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
    base_dir = Path(path).absolute().parent if path else None
    return config_from_mapping(raw, environ, require_feed=require_feed, base_dir=base_dir)


def mask_url(url: str) -> str:
    """`url` with its credentials masked: userinfo and every query value (finding D4).

    Feed vendors put API keys in the query string, and basic-auth userinfo
    can appear in a broker URL; neither may reach a log or a config dump.
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rpartition("@")[2]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(name, MASK) for name, _ in pairs], safe="*") if pairs else MASK
    fragment = MASK if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def _shown(rule: Rule, value: Any) -> Any:
    if rule.secret and value:
        return MASK
    if rule.url and value:
        return mask_url(value)
    return list(value) if isinstance(value, tuple) else value


def masked(cfg: Config) -> dict[str, dict[str, Any]]:
    """The effective configuration as plain data, secrets and URL credentials masked."""
    out: dict[str, dict[str, Any]] = {}
    for section, cls in _sections().items():
        values = getattr(cfg, section)
        out[section] = {name: _shown(rule, getattr(values, name))
                        for name, rule in _rules(cls).items()}
    return out


def render_toml(data: Mapping[str, Mapping[str, Any]]) -> str:
    """Render plain config data as TOML text (for check-config)."""
    lines: list[str] = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        for key_name, value in values.items():
            lines.append(f"{key_name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + "".join(_toml_char(c) for c in str(value)) + '"'


def _toml_char(char: str) -> str:
    """A character as TOML allows it in a basic string (no raw controls or DEL)."""
    if char in '"\\':
        return "\\" + char
    if (char < " " and char != "\t") or char == "\x7f":
        return f"\\u{ord(char):04x}"
    return char
