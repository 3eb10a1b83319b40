"""Reading a configuration: TOML, then TRADEGUARD_* overrides, then every rule at once."""

from __future__ import annotations

import difflib
import logging
import math
import os
import tomllib
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from tradeguard.config._schema import FEED_MODES, Config, MarketConfig, _keys, _rules, _sections
from tradeguard.errors import ConfigError
from tradeguard.market import parse_clock, parse_holiday, parse_session, zone
from tradeguard.net.addresses import parse_server

ENV_PREFIX = "TRADEGUARD_"

logger = logging.getLogger("tradeguard.config")


def _base(kind: Any) -> Any:
    """The plain type behind a field's annotation: a Literal of strings is a str."""
    return str if typing.get_origin(kind) is Literal else kind


def _type_name(kind: Any) -> str:
    if typing.get_origin(kind) is dict:
        return "a table of strings"
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
    elif typing.get_origin(kind) is dict:
        if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
            return dict(value)
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
    if typing.get_origin(kind) is dict:  # NSE=09:15-15:30,MCX=always
        pairs = [item.partition("=") for item in text.split(",") if item.strip()]
        if any(not sep for _, sep, _ in pairs):
            raise ValueError(f"must be NAME=VALUE pairs, comma-separated, got {text!r}")
        return {name.strip(): value.strip() for name, _, value in pairs}
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
    problems += _mode_problems(feed.protocol, feed.mode)
    problems += _kite_problems(cfg)
    if not cfg.telegram.api_base:
        problems.append("telegram.api_base: must be a http:// or https:// URL")
    if feed.ca_file and not Path(feed.ca_file).is_file():
        problems.append(f"feed.ca_file: no such file {feed.ca_file!r}")
    problems += _market_problems(cfg.market)
    for server in cfg.dns.fallback_servers:
        try:
            parse_server(server)
        except ValueError:
            problems.append(f"dns.fallback_servers: {server!r} is not an ip or ip:port")


def _market_problems(market: MarketConfig) -> list[str]:
    """Every session, holiday, time and zone of [market] must parse (SPEC §14)."""
    checks: list[tuple[str, Callable[[str], object], str]] = [
        ("market.timezone", zone, market.timezone),
        *((f"market.sessions.{name}", parse_session, text)
          for name, text in market.sessions.items()),
        *(("market.holidays", parse_holiday, day) for day in market.holidays),
    ]
    if market.square_off:
        checks.append(("market.square_off", parse_clock, market.square_off))
    if market.default_exchange and ":" in market.default_exchange:
        checks.append(("market.default_exchange", _no_colon, market.default_exchange))
    found = []
    for where, parse, text in checks:
        try:
            parse(text)
        except ValueError as exc:
            found.append(f"{where}: {exc}")
    return found


def _no_colon(text: str) -> None:
    raise ValueError(f"{text!r} is an exchange name such as \"NSE\", without a colon")


def _kite_problems(cfg: Config) -> list[str]:
    """What `broker.kind = "kite"` (or `feed.protocol = "kite"`) needs of [broker]."""
    b = cfg.broker
    found = []
    if b.ca_file and not Path(b.ca_file).is_file():
        found.append(f"broker.ca_file: no such file {b.ca_file!r}")
    if "kite" not in (b.kind, cfg.feed.protocol):
        return found
    if not b.api_key:
        found.append("broker.api_key: required with Kite (the app's api_key)")
    if b.market_protection == 0:
        found.append("broker.market_protection: Kite refuses MARKET orders without protection "
                     "(0); use -1 (automatic) or 1..100 (percent)")
    return found


def _mode_problems(protocol: str, mode: str) -> list[str]:
    modes = FEED_MODES.get(protocol, ())
    if not mode or mode in modes:
        return []
    known = f"known: {', '.join(repr(m) for m in modes)}" if modes else "leave it empty"
    return [f"feed.mode: feed.protocol {protocol!r} has no mode {mode!r} ({known})"]


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
    if require_feed and not cfg.feed.url and cfg.feed.protocol == "json":  # kite: ws.kite.trade
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
