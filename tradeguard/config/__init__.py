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

from tradeguard.config._load import ENV_PREFIX, config_from_mapping, load_config
from tradeguard.config._rules import MASK, Rule, key, mask_url, registry
from tradeguard.config._schema import (
    DEFAULT_SESSIONS,
    MAX_CLOSE_RETRIES,
    MIN_API_TOKEN,
    ApiConfig,
    BlindPolicy,
    BrokerConfig,
    BrokerKind,
    Config,
    DebugConfig,
    DisplayConfig,
    DnsConfig,
    FeedConfig,
    FeedProtocolName,
    MarketConfig,
    MonitorConfig,
    PricesConfig,
    StoreConfig,
    SupervisorConfig,
    TelegramConfig,
)
from tradeguard.config._show import masked, render_toml

__all__ = [
    "DEFAULT_SESSIONS", "ENV_PREFIX", "MASK", "MAX_CLOSE_RETRIES", "MIN_API_TOKEN", "ApiConfig",
    "BlindPolicy", "BrokerConfig", "BrokerKind", "Config", "DebugConfig", "DisplayConfig",
    "DnsConfig", "FeedConfig", "FeedProtocolName", "MarketConfig", "MonitorConfig", "PricesConfig",
    "Rule", "StoreConfig", "SupervisorConfig", "TelegramConfig", "config_from_mapping", "key",
    "load_config", "mask_url", "masked", "registry", "render_toml",
]
