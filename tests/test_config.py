"""Configuration: SPEC §3 defaults, TOML, environment overrides, validation, masking."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tradeguard.config import (
    MASK,
    Config,
    config_from_mapping,
    load_config,
    masked,
    render_toml,
)
from tradeguard.errors import ConfigError
from tradeguard.net.addresses import is_loopback, parse_server

# SPEC §3, key by key. Written out rather than read from the dataclasses so that a
# changed default is a failing test, not a silently changed contract.
SPEC_DEFAULTS: dict[str, dict[str, Any]] = {
    "feed": {
        "url": "", "protocol": "json", "mode": "", "symbols": [], "ca_file": "",
        "connect_timeout": 10,
        "reconnect_initial_delay": 1.0, "reconnect_max_delay": 60.0, "reconnect_jitter": 0.5,
        "stable_after": 10.0, "ping_interval": 10.0, "ping_timeout": 5.0,
        "silence_timeout": 15.0, "dns_check_every": 3,
    },
    "dns": {
        "fallback_servers": ["8.8.8.8", "1.1.1.1", "8.8.4.4", "1.0.0.1"], "timeout": 5.0,
        "system_head_start": 0.2, "health_interval": 30.0, "serve_stale": True,
    },
    "prices": {"cache_timeout": 300, "stale_warning_threshold": 30},
    "monitor": {"sweep_interval": 1.0, "max_close_retries": 3, "blind_policy": "alert"},
    "broker": {"kind": "paper", "url": "", "token": "", "timeout": 5.0, "product": "MIS",
               "instruments_url": "", "api_key": "", "token_file": "", "ca_file": "",
               "market_protection": -1},
    "api": {"host": "127.0.0.1", "port": 8080, "token": ""},
    "telegram": {
        "bot_token": "", "chat_id": "", "api_base": "https://api.telegram.org",
        "max_per_minute": 20,
    },
    "store": {"path": "tradeguard.db"},
    "market": {
        "timezone": "Asia/Kolkata", "default_exchange": "", "holidays": [], "square_off": "",
        "sessions": {"NSE": "09:15-15:30", "BSE": "09:15-15:30", "NFO": "09:15-15:30",
                     "BFO": "09:15-15:30", "CDS": "09:00-17:00", "MCX": "09:00-23:30"},
    },
    "supervisor": {
        "max_restarts": 5, "within_seconds": 30, "restart_backoff_min": 0.1,
        "restart_backoff_max": 5.0, "liveness_interval": 5.0, "liveness_timeout": 2.0,
    },
    "display": {"currency": "₹"},
    "debug": {"fault_injection": False},
}

# The SPEC's own example file, less feed.url's example host which is kept.
SPEC_TOML = """
[feed]
url = "wss://feed.example.com/ws"
protocol = "json"
mode = ""
symbols = []
ca_file = ""
connect_timeout = 10
reconnect_initial_delay = 1.0
reconnect_max_delay = 60.0
reconnect_jitter = 0.5
stable_after = 10.0
ping_interval = 10.0
ping_timeout = 5.0
silence_timeout = 15.0
dns_check_every = 3

[dns]
fallback_servers = ["8.8.8.8", "1.1.1.1", "8.8.4.4", "1.0.0.1"]
timeout = 5.0
system_head_start = 0.2
health_interval = 30.0
serve_stale = true

[prices]
cache_timeout = 300
stale_warning_threshold = 30

[monitor]
sweep_interval = 1.0
max_close_retries = 3
blind_policy = "alert"

[broker]
kind = "paper"
url = ""
token = ""
timeout = 5.0
product = "MIS"

[api]
host = "127.0.0.1"
port = 8080
token = ""

[telegram]
bot_token = ""
chat_id = ""
api_base = "https://api.telegram.org"
max_per_minute = 20

[store]
path = "tradeguard.db"

[market]
timezone = "Asia/Kolkata"
default_exchange = ""
holidays = []
square_off = ""

[market.sessions]
NSE = "09:15-15:30"
BSE = "09:15-15:30"
NFO = "09:15-15:30"
BFO = "09:15-15:30"
CDS = "09:00-17:00"
MCX = "09:00-23:30"

[supervisor]
max_restarts = 5
within_seconds = 30
restart_backoff_min = 0.1
restart_backoff_max = 5.0
liveness_interval = 5.0
liveness_timeout = 2.0

[display]
currency = "₹"

[debug]
fault_injection = false
"""


def problems_of(raw: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(raw, env or {})
    return info.value.problems


def only_problem(raw: dict[str, Any], env: dict[str, str] | None = None) -> str:
    problems = problems_of(raw, env)
    assert len(problems) == 1, problems
    return problems[0]


def write(tmp_path: Path, text: str, name: str = "tg.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# Defaults -----------------------------------------------------------------


def test_every_key_has_the_spec_default() -> None:
    assert masked(Config()) == SPEC_DEFAULTS


def test_the_seed_constants_keep_their_values() -> None:
    cfg = Config()
    assert cfg.feed.reconnect_jitter == 0.5
    assert cfg.dns.fallback_servers == ("8.8.8.8", "1.1.1.1", "8.8.4.4", "1.0.0.1")
    assert cfg.dns.timeout == 5
    assert cfg.prices.cache_timeout == 300
    assert cfg.monitor.max_close_retries == 3
    assert cfg.prices.stale_warning_threshold == 30
    assert cfg.feed.connect_timeout == 10


def test_an_empty_mapping_is_the_defaults_and_numbers_are_typed() -> None:
    cfg = config_from_mapping({}, {})
    assert cfg == Config()
    assert isinstance(cfg.feed.connect_timeout, float)
    assert isinstance(cfg.api.port, int)


def test_the_spec_example_file_loads(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, SPEC_TOML), {})
    assert cfg == Config().replace("feed", url="wss://feed.example.com/ws").replace(
        "store", path=str(tmp_path / "tradeguard.db"))


def test_toml_values_are_read_and_integers_widen_to_floats(tmp_path: Path) -> None:
    path = write(tmp_path, """
[feed]
url = "ws://127.0.0.1:9001/ws"
symbols = ["BOSCHLTD", "INFY"]
reconnect_max_delay = 30
[dns]
fallback_servers = ["127.0.0.1:5353"]
serve_stale = false
[api]
port = 9090
""")
    cfg = load_config(path, {})
    assert cfg.feed.url == "ws://127.0.0.1:9001/ws"
    assert cfg.feed.symbols == ("BOSCHLTD", "INFY")
    assert cfg.feed.reconnect_max_delay == 30.0
    assert isinstance(cfg.feed.reconnect_max_delay, float)
    assert cfg.dns.fallback_servers == ("127.0.0.1:5353",)
    assert cfg.dns.serve_stale is False
    assert cfg.api.port == 9090
    assert cfg.feed.ping_interval == 10.0  # untouched keys keep their defaults


def test_replace_changes_one_key_of_one_section() -> None:
    cfg = Config().replace("api", port=9999)
    assert cfg.api.port == 9999
    assert cfg.api.host == "127.0.0.1"
    assert Config().api.port == 8080


# Environment ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "section", "key", "value"),
    [
        ("TRADEGUARD_FEED_URL", "wss://x.example/ws", "feed", "url", "wss://x.example/ws"),
        ("TRADEGUARD_API_PORT", "9000", "api", "port", 9000),
        ("TRADEGUARD_API_PORT", " 9000 ", "api", "port", 9000),
        ("TRADEGUARD_DNS_TIMEOUT", "2.5", "dns", "timeout", 2.5),
        ("TRADEGUARD_DNS_TIMEOUT", "3", "dns", "timeout", 3.0),
        ("TRADEGUARD_FEED_RECONNECT_MAX_DELAY", "120", "feed", "reconnect_max_delay", 120.0),
        ("TRADEGUARD_DNS_SERVE_STALE", "false", "dns", "serve_stale", False),
        ("TRADEGUARD_DNS_SERVE_STALE", "0", "dns", "serve_stale", False),
        ("TRADEGUARD_DNS_SERVE_STALE", "No", "dns", "serve_stale", False),
        ("TRADEGUARD_DNS_SERVE_STALE", "off", "dns", "serve_stale", False),
        ("TRADEGUARD_DEBUG_FAULT_INJECTION", "true", "debug", "fault_injection", True),
        ("TRADEGUARD_DEBUG_FAULT_INJECTION", "1", "debug", "fault_injection", True),
        ("TRADEGUARD_DEBUG_FAULT_INJECTION", "YES", "debug", "fault_injection", True),
        ("TRADEGUARD_DEBUG_FAULT_INJECTION", "on", "debug", "fault_injection", True),
        ("TRADEGUARD_DNS_FALLBACK_SERVERS", "127.0.0.1:5353, [::1]:5353,,",
         "dns", "fallback_servers", ("127.0.0.1:5353", "[::1]:5353")),
        ("TRADEGUARD_FEED_SYMBOLS", "BOSCHLTD", "feed", "symbols", ("BOSCHLTD",)),
        ("TRADEGUARD_FEED_SYMBOLS", "", "feed", "symbols", ()),
        ("TRADEGUARD_TELEGRAM_BOT_TOKEN", "123:abc", "telegram", "bot_token", "123:abc"),
        ("TRADEGUARD_TELEGRAM_CHAT_ID", "-100", "telegram", "chat_id", "-100"),
    ],
)
def test_environment_overrides_any_key(
    name: str, text: str, section: str, key: str, value: object
) -> None:
    env = {name: text}
    if section == "telegram":  # a bot token needs a chat id and vice versa is fine
        env.setdefault("TRADEGUARD_TELEGRAM_CHAT_ID", "-100")
    cfg = config_from_mapping({}, env)
    assert getattr(getattr(cfg, section), key) == value


def test_environment_wins_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[api]\nport = 9090\nhost = "127.0.0.2"\n')
    cfg = load_config(path, {"TRADEGUARD_API_PORT": "9191"})
    assert cfg.api.port == 9191
    assert cfg.api.host == "127.0.0.2"


def test_other_environment_variables_are_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    env = {"TRADEGUARD_CONFIG": str(path), "HOME": "/root", "tradeguard_api_port": "1"}
    assert load_config(None, env) == Config().replace("store", path=str(tmp_path / "tradeguard.db"))


@pytest.mark.parametrize(
    ("name", "text", "key", "words"),
    [
        ("TRADEGUARD_API_PORT", "eighty", "api.port", "integer"),
        ("TRADEGUARD_API_PORT", "80.5", "api.port", "integer"),
        ("TRADEGUARD_DNS_TIMEOUT", "soon", "dns.timeout", "number"),
        ("TRADEGUARD_DNS_TIMEOUT", "nan", "dns.timeout", "finite"),
        ("TRADEGUARD_DNS_TIMEOUT", "inf", "dns.timeout", "finite"),
        ("TRADEGUARD_DNS_TIMEOUT", "1e999", "dns.timeout", "finite"),
        ("TRADEGUARD_DNS_SERVE_STALE", "maybe", "dns.serve_stale", "true or false"),
        ("TRADEGUARD_DNS_SERVE_STALE", "", "dns.serve_stale", "true or false"),
        ("TRADEGUARD_DNS_TIMEOUT", "-1", "dns.timeout", "greater than 0"),
    ],
)
def test_a_bad_environment_value_names_its_key(
    name: str, text: str, key: str, words: str
) -> None:
    problem = only_problem({}, {name: text})
    assert problem.startswith(key)
    assert words in problem


def test_an_unknown_environment_key_is_reported_with_a_suggestion() -> None:
    problem = only_problem({}, {"TRADEGUARD_FEED_RECONECT_MAX_DELAY": "5"})
    assert "TRADEGUARD_FEED_RECONECT_MAX_DELAY" in problem
    assert "'reconnect_max_delay'" in problem


@pytest.mark.parametrize("name", ["TRADEGUARD_VERSION", "TRADEGUARD_HOME", "TRADEGUARD_FEDD_URL"])
def test_c13_a_variable_outside_every_section_is_ignored_with_a_warning(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """C13: a deployment tool's TRADEGUARD_VERSION must not stop `run` with 78."""
    cfg = config_from_mapping({}, {name: "1.2.3"})
    assert cfg == Config()
    warning = next(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert warning.startswith(f"{name}: ignored")
    if name == "TRADEGUARD_FEDD_URL":
        assert "'feed'" in warning  # the suggestion survives


def test_c13_a_known_section_with_an_unknown_key_is_still_an_error() -> None:
    problem = only_problem({}, {"TRADEGUARD_FEED_URLS": "ws://x"})
    assert problem.startswith("TRADEGUARD_FEED_URLS: feed has no key 'urls'")
    assert "'url'" in problem


def test_an_environment_override_of_a_section_that_is_not_a_table() -> None:
    problems = problems_of({"feed": "ws://x"}, {"TRADEGUARD_FEED_URL": "ws://127.0.0.1/ws"})
    assert problems == ["[feed]: must be a table of keys"]


# Unknown keys, wrong types, all errors together ---------------------------------


def test_a_misspelt_key_suggests_the_right_one() -> None:
    problem = only_problem({"feed": {"reconect_max_delay": 5}})
    assert problem.startswith("feed.reconect_max_delay: unknown key")
    assert "did you mean 'reconnect_max_delay'?" in problem


def test_a_misspelt_section_suggests_the_right_one() -> None:
    problem = only_problem({"telegarm": {"chat_id": "1"}})
    assert problem.startswith("[telegarm]: unknown section")
    assert "did you mean 'telegram'?" in problem


def test_nonsense_gets_no_suggestion() -> None:
    assert "did you mean" not in only_problem({"feed": {"zzzzqqq": 1}})
    assert "did you mean" not in only_problem({"zzzzqqq": {}})


@pytest.mark.parametrize(
    ("section", "key", "value", "words"),
    [
        ("api", "port", "8080", "an integer"),
        ("api", "port", 8080.0, "an integer"),
        ("api", "port", True, "an integer"),
        ("feed", "connect_timeout", "10", "a number"),
        ("feed", "connect_timeout", False, "a number"),
        ("feed", "connect_timeout", float("inf"), "finite"),
        ("feed", "connect_timeout", float("nan"), "finite"),
        pytest.param("feed", "connect_timeout", 10**400, "finite", id="huge-int"),
        ("dns", "serve_stale", 1, "true or false"),
        ("dns", "serve_stale", "yes", "true or false"),
        ("feed", "url", 5, "a string"),
        ("feed", "symbols", "BOSCHLTD", "a list of strings"),
        ("feed", "symbols", ["BOSCHLTD", 5], "a list of strings"),
        ("dns", "fallback_servers", [[]], "a list of strings"),
        ("store", "path", ["a"], "a string"),
    ],
)
def test_a_wrong_type_is_rejected_naming_its_key(
    section: str, key: str, value: object, words: str
) -> None:
    problem = only_problem({section: {key: value}})
    assert problem.startswith(f"{section}.{key}:")
    assert words in problem


@pytest.mark.parametrize(
    ("section", "key"), [("api", "token"), ("broker", "token"), ("telegram", "bot_token")]
)
def test_a_secret_of_the_wrong_type_is_not_quoted_in_the_error(section: str, key: str) -> None:
    problem = only_problem({section: {key: 8675309123}})
    assert problem == f"{section}.{key}: must be a string"


def test_a_section_that_is_not_a_table_is_rejected() -> None:
    assert only_problem({"api": 5}) == "[api]: must be a table of keys"


def test_every_problem_is_reported_at_once_each_with_its_key() -> None:
    problems = problems_of(
        {
            "feed": {"reconect_max_delay": 5, "ping_timeout": 20.0},
            "api": {"port": "http"},
            "dns": {"fallback_servers": ["dns.google"]},
            "colour": {},
        },
        {"TRADEGUARD_PRICES_CACHE_TIMEOUT": "long"},
    )
    keys = ["feed.reconect_max_delay", "feed.ping_timeout", "api.port",
            "dns.fallback_servers", "[colour]", "prices.cache_timeout"]
    assert len(problems) == len(keys), problems
    for key in keys:
        assert any(key in p for p in problems), (key, problems)


def test_config_error_message_holds_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping({"api": {"port": 0, "host": 1}}, {})
    assert len(info.value.problems) == 2
    assert str(info.value) == "\n".join(info.value.problems)


# Ranges and cross-key rules ------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"api": {"port": 0}}, "api.port"),
        ({"api": {"port": 65536}}, "api.port"),
        ({"api": {"port": -1}}, "api.port"),
        ({"feed": {"connect_timeout": 0}}, "feed.connect_timeout"),
        ({"feed": {"silence_timeout": -1.0}}, "feed.silence_timeout"),
        ({"feed": {"dns_check_every": 0}}, "feed.dns_check_every"),
        ({"feed": {"reconnect_jitter": -0.1}}, "feed.reconnect_jitter"),
        ({"feed": {"stable_after": -1}}, "feed.stable_after"),
        ({"dns": {"timeout": 0}}, "dns.timeout"),
        ({"dns": {"system_head_start": -0.2}}, "dns.system_head_start"),
        ({"dns": {"health_interval": 0}}, "dns.health_interval"),
        ({"prices": {"stale_warning_threshold": 301}}, "prices.stale_warning_threshold"),
        ({"monitor": {"sweep_interval": 0}}, "monitor.sweep_interval"),
        ({"monitor": {"max_close_retries": -1}}, "monitor.max_close_retries"),
        ({"monitor": {"blind_policy": "panic"}}, "monitor.blind_policy"),
        ({"broker": {"kind": "ftp"}}, "broker.kind"),
        ({"broker": {"timeout": 0}}, "broker.timeout"),
        ({"broker": {"kind": "http"}}, "broker.url"),
        ({"broker": {"kind": "http", "url": "ftp://b.example"}}, "broker.url"),
        ({"broker": {"kind": "http", "url": "http://b.example:99999"}}, "broker.url"),
        ({"feed": {"url": "https://feed.example.com/ws"}}, "feed.url"),
        ({"feed": {"url": "ws://"}}, "feed.url"),
        ({"feed": {"protocol": "protobuf"}}, "feed.protocol"),
        ({"feed": {"ca_file": "/nonexistent/ca.pem"}}, "feed.ca_file"),
        ({"feed": {"ping_timeout": 10.0}}, "feed.ping_timeout"),
        ({"feed": {"ping_interval": 4.0}}, "feed.ping_timeout"),
        ({"feed": {"reconnect_initial_delay": 61.0}}, "feed.reconnect_initial_delay"),
        ({"telegram": {"api_base": "api.telegram.org"}}, "telegram.api_base"),
        ({"telegram": {"bot_token": "1:x"}}, "telegram.chat_id"),
        ({"telegram": {"max_per_minute": 0}}, "telegram.max_per_minute"),
        ({"store": {"path": ""}}, "store.path"),
        ({"supervisor": {"max_restarts": -1}}, "supervisor.max_restarts"),
        ({"supervisor": {"within_seconds": 0}}, "supervisor.within_seconds"),
        ({"supervisor": {"restart_backoff_min": 6.0}}, "supervisor.restart_backoff_min"),
        ({"supervisor": {"liveness_timeout": 5.0}}, "supervisor.liveness_timeout"),
    ],
)
def test_a_value_out_of_range_is_rejected_naming_its_key(raw: dict[str, Any], key: str) -> None:
    assert only_problem(raw).startswith(key)


def test_a_zero_cache_timeout_is_rejected_and_so_is_the_threshold_above_it() -> None:
    problems = problems_of({"prices": {"cache_timeout": 0}})
    assert [p.split(":")[0] for p in problems] == [
        "prices.cache_timeout", "prices.stale_warning_threshold"
    ]


@pytest.mark.parametrize(
    "raw",
    [
        {"feed": {"reconnect_initial_delay": 60.0, "reconnect_max_delay": 60.0}},
        {"feed": {"ping_timeout": 9.99}},
        {"feed": {"reconnect_jitter": 0, "stable_after": 0}},
        {"prices": {"stale_warning_threshold": 300}},
        {"api": {"port": 1}},
        {"api": {"port": 65535}},
        {"broker": {"kind": "http", "url": "https://broker.example:8443/v1"}},
        {"telegram": {"api_base": "http://127.0.0.1:8081", "bot_token": "1:x",
                      "chat_id": "42"}},
        {"monitor": {"blind_policy": "close", "max_close_retries": 0}},
        {"feed": {"url": "wss://feed.example.com/ws"}},
        {"feed": {"url": "ws://127.0.0.1:9001"}},
    ],
)
def test_a_value_on_the_boundary_is_accepted(raw: dict[str, Any]) -> None:
    config_from_mapping(raw, {})


def test_an_existing_ca_file_is_accepted(tmp_path: Path) -> None:
    ca = write(tmp_path, "not checked here", "ca.pem")
    assert config_from_mapping({"feed": {"ca_file": str(ca)}}, {}).feed.ca_file == str(ca)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8.8.8.8", ("8.8.8.8", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("::1", ("::1", 53)),
        ("2001:db8::53", ("2001:db8::53", 53)),
        ("[::1]:5353", ("::1", 5353)),
        ("[2001:db8::53]", ("2001:db8::53", 53)),
        ("127.0.0.1:65535", ("127.0.0.1", 65535)),
    ],
)
def test_fallback_servers_are_ip_or_ip_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_server(text) == expected
    assert config_from_mapping({"dns": {"fallback_servers": [text]}}, {})


@pytest.mark.parametrize(
    "text",
    ["dns.google", "", "8.8.8.8:0", "8.8.8.8:65536", "8.8.8.8:dns", "8.8.8.8:",
     "[::1]:", "[::1]53", "[::1", "[dns.google]:53", "999.1.1.1", ":53"],
)
def test_a_bad_fallback_server_is_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_server(text)
    problem = only_problem({"dns": {"fallback_servers": ["1.1.1.1", text]}})
    assert problem.startswith("dns.fallback_servers:")
    assert repr(text) in problem


# Reading files -------------------------------------------------------------------


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.toml", {})
    assert "absent.toml" in info.value.problems[0]


@pytest.mark.parametrize("content", [b"[feed\nurl = 1\n", b'[feed]\nurl = "\xff"\n'])
def test_a_file_that_is_not_toml_is_a_config_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert "not valid TOML" in info.value.problems[0]


def test_the_config_path_comes_from_the_environment_when_not_given(tmp_path: Path) -> None:
    path = write(tmp_path, "[api]\nport = 7070\n")
    assert load_config(None, {"TRADEGUARD_CONFIG": str(path)}).api.port == 7070
    assert load_config(None, {}) == Config()


def test_run_requires_a_feed_url() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping({}, {}, require_feed=True)
    assert info.value.problems[0].startswith("feed.url:")
    cfg = config_from_mapping({}, {"TRADEGUARD_FEED_URL": "ws://127.0.0.1/ws"},
                              require_feed=True)
    assert cfg.feed.url == "ws://127.0.0.1/ws"


# Masking and printing ---------------------------------------------------------


def test_masked_hides_every_secret_and_nothing_else() -> None:
    cfg = config_from_mapping(
        {"api": {"token": "api-secret-0123456"}, "broker": {"token": "broker-secret"},
         "telegram": {"bot_token": "bot-secret", "chat_id": "42"}},
        {},
    )
    data = masked(cfg)
    assert data["api"]["token"] == MASK
    assert data["broker"]["token"] == MASK
    assert data["telegram"]["bot_token"] == MASK
    assert "secret" not in repr(data)
    assert data["telegram"]["chat_id"] == "42"
    assert cfg.api.token == "api-secret-0123456"  # the config itself keeps the real value
    expected = {section: {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
                for section, values in dataclasses.asdict(cfg).items()}
    for section, key in (("api", "token"), ("broker", "token"), ("telegram", "bot_token")):
        expected[section][key] = MASK
    assert data == expected


def test_an_empty_secret_is_shown_empty() -> None:
    data = masked(Config())
    assert data["api"]["token"] == ""
    assert data["telegram"]["bot_token"] == ""


def test_rendered_toml_parses_back_to_the_same_values() -> None:
    cfg = config_from_mapping(
        {"feed": {"url": "wss://feed.example.com/ws", "symbols": ["A", "B&C"]},
         "api": {"token": "s3cret-s3cret-s3cret"}},
        {},
    )
    data = masked(cfg)
    assert tomllib.loads(render_toml(data)) == data


toml_text = st.text(st.characters(codec="utf-8"), max_size=30)


@given(currency=toml_text, path=toml_text.filter(bool), symbols=st.lists(toml_text, max_size=4))
def test_any_string_renders_as_toml_that_parses_back(
    currency: str, path: str, symbols: list[str]
) -> None:
    cfg = Config().replace("display", currency=currency).replace("store", path=path)
    cfg = cfg.replace("feed", symbols=symbols)
    data = masked(cfg)
    assert tomllib.loads(render_toml(data)) == data


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("10.0.0.1", False), ("example.com", False), ("", False)],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# Findings --------------------------------------------------------------------------


def test_b2_an_in_memory_store_is_refused() -> None:
    """B2: ":memory:" would lose every position and close claim at the first restart."""
    assert only_problem({"store": {"path": ":memory:"}}).startswith("store.path: ':memory:'")


def test_b3_a_relative_store_path_follows_the_config_file(tmp_path: Path) -> None:
    """B3: the store is found beside the config, whatever the working directory."""
    path = write(tmp_path, '[store]\npath = "data/tg.db"\n')
    assert load_config(path, {}).store.path == str(tmp_path / "data" / "tg.db")
    via_env = load_config(path, {"TRADEGUARD_STORE_PATH": "other.db"})
    assert via_env.store.path == str(tmp_path / "other.db")
    absolute = load_config(path, {"TRADEGUARD_STORE_PATH": "/var/lib/tg/tg.db"})
    assert absolute.store.path == "/var/lib/tg/tg.db"


def test_d6_a_short_configured_api_token_is_refused_without_quoting_it() -> None:
    """D6: a token under 16 characters can be guessed over the network."""
    problem = only_problem({"api": {"token": "short-tok"}})
    assert problem == "api.token: must be at least 16 characters"
    assert "short-tok" not in problem
    assert config_from_mapping({"api": {"token": "x" * 16}}, {}).api.token == "x" * 16


def test_max_close_retries_has_an_upper_bound() -> None:
    assert only_problem({"monitor": {"max_close_retries": 21}}) == (
        "monitor.max_close_retries: must be at most 20")
    assert config_from_mapping({"monitor": {"max_close_retries": 20}}, {})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"broker": {"kind": "kyte"}}, "broker.kind: unknown kind 'kyte' (known: "),
        ({"feed": {"protocol": "xml"}}, "feed.protocol: unknown protocol 'xml' (known: "),
        ({"monitor": {"blind_policy": "panic"}}, "monitor.blind_policy: must be 'alert' or"),
    ],
)
def test_names_are_checked_against_their_registries(raw: dict[str, Any], expected: str) -> None:
    assert only_problem(raw).startswith(expected)


def test_every_registered_name_is_accepted() -> None:
    from tradeguard.config import registry

    for kind in registry("tradeguard.brokers:KINDS"):
        extra = {"http": {"url": "https://broker.example.com"},
                 "kite": {"api_key": "kiteapp"}}.get(kind, {})
        assert config_from_mapping({"broker": {"kind": kind, **extra}}, {}).broker.kind == kind
    for protocol in registry("tradeguard.feed:PROTOCOLS"):
        key = {"kite": {"api_key": "kiteapp"}}.get(protocol, {})
        raw = {"feed": {"protocol": protocol}, "broker": key}
        assert config_from_mapping(raw, {}).feed.protocol == protocol


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("wss://feed.example.com/ws?apikey=K1&mode=ltp",
         "wss://feed.example.com/ws?apikey=********&mode=********"),
        ("https://user:pass@broker.example.com:8443/v1",
         "https://********@broker.example.com:8443/v1"),
        ("wss://feed.example.com/ws", "wss://feed.example.com/ws"),
        ("wss://feed.example.com/ws?token", "wss://feed.example.com/ws?token=********"),
    ],
)
def test_d4_mask_url_hides_query_values_and_userinfo(url: str, shown: str) -> None:
    """D4: query-string keys and basic-auth userinfo are masked wherever a URL is shown."""
    from tradeguard.config import mask_url

    assert mask_url(url) == shown
