"""`tradeguard check-config`, run as an operator runs it: a separate process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tradeguard.config import MASK, load_config, masked

SECRETS = ("api-secret-7f3a-0123456789", "broker-secret-91c2", "1234:bot-secret-55de")

VALID = f"""
[feed]
url = "wss://feed.example.com/ws"
symbols = ["BOSCHLTD", "INFY"]

[dns]
fallback_servers = ["127.0.0.1:5353", "[::1]:5353"]

[api]
port = 9090
token = "{SECRETS[0]}"

[broker]
kind = "http"
url = "https://broker.example.com"
token = "{SECRETS[1]}"

[telegram]
bot_token = "{SECRETS[2]}"
chat_id = "-1001"

[display]
currency = "₹ \\"INR\\""
"""

THREE_ERRORS = """
[feed]
reconect_max_delay = 30.0

[api]
port = 70000

[dns]
timeout = "fast"
"""


def run_check(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `tradeguard check-config` with an environment free of the caller's TRADEGUARD_*."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TRADEGUARD_")}
    return subprocess.run(
        [sys.executable, "-m", "tradeguard.cli", "check-config", *args],
        env={**base, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=30,
        check=False,
    )


@pytest.fixture
def valid_file(tmp_path: Path) -> Path:
    path = tmp_path / "valid.toml"
    path.write_text(VALID, encoding="utf-8")
    return path


def test_three_errors_exit_78_and_name_every_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(THREE_ERRORS, encoding="utf-8")
    result = run_check("--config", str(path))
    assert result.returncode == 78, result.stderr
    assert result.stdout == ""
    for key in ("feed.reconect_max_delay", "api.port", "dns.timeout"):
        assert key in result.stderr
    assert "reconnect_max_delay" in result.stderr  # the suggestion reaches the operator
    assert "3 problem" in result.stderr


def test_a_valid_config_exits_0_and_shows_no_secret(valid_file: Path) -> None:
    result = run_check("--config", str(valid_file))
    assert result.returncode == 0, result.stderr
    for secret in SECRETS:
        assert secret not in result.stdout
        assert secret not in result.stderr
    assert MASK in result.stdout


def test_the_printed_toml_is_the_effective_config_masked(valid_file: Path) -> None:
    result = run_check("--config", str(valid_file), env={"TRADEGUARD_API_PORT": "9191"})
    assert result.returncode == 0, result.stderr
    printed = tomllib.loads(result.stdout)
    expected = masked(load_config(valid_file, {"TRADEGUARD_API_PORT": "9191"}))
    assert printed == expected
    assert printed["api"]["port"] == 9191
    assert printed["api"]["token"] == MASK
    assert printed["display"]["currency"] == '₹ "INR"'


def test_json_output_is_the_same_masked_config(valid_file: Path) -> None:
    result = run_check("--config", str(valid_file), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == masked(load_config(valid_file, {}))
    for secret in SECRETS:
        assert secret not in result.stdout


def test_a_secret_from_the_environment_is_masked_too(valid_file: Path) -> None:
    env_secret = "env-broker-secret-0c1d"
    result = run_check("--config", str(valid_file),
                       env={"TRADEGUARD_BROKER_TOKEN": env_secret})
    assert result.returncode == 0, result.stderr
    assert env_secret not in result.stdout + result.stderr
    assert tomllib.loads(result.stdout)["broker"]["token"] == MASK


def test_the_config_path_comes_from_tradeguard_config(valid_file: Path, tmp_path: Path) -> None:
    result = run_check(env={"TRADEGUARD_CONFIG": str(valid_file)}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert tomllib.loads(result.stdout)["api"]["port"] == 9090


def test_a_bad_environment_value_is_a_config_error(valid_file: Path) -> None:
    result = run_check("--config", str(valid_file), env={"TRADEGUARD_API_PORT": "http"})
    assert result.returncode == 78
    assert "api.port" in result.stderr
    assert "TRADEGUARD_API_PORT" in result.stderr


def test_a_missing_file_exits_78(tmp_path: Path) -> None:
    result = run_check("--config", str(tmp_path / "absent.toml"))
    assert result.returncode == 78
    assert "absent.toml" in result.stderr


def test_an_error_report_never_shows_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    text = VALID.replace(f'token = "{SECRETS[0]}"', "token = 8675309123")
    path.write_text(text + '\n[monitor]\nblind_policy = "panic"\n', encoding="utf-8")
    result = run_check("--config", str(path))
    assert result.returncode == 78
    assert "monitor.blind_policy" in result.stderr
    assert "api.token" in result.stderr
    for secret in (*SECRETS, "8675309123"):
        assert secret not in result.stdout + result.stderr


def test_d4_credentials_inside_urls_are_masked(tmp_path: Path) -> None:
    """D4: a feed API key in the query string and broker userinfo never reach the printout."""
    path = tmp_path / "urls.toml"
    path.write_text(
        '[feed]\nurl = "wss://feed.example.com/ws?apikey=feed-key-77aa&mode=ltp"\n'
        '[broker]\nkind = "http"\nurl = "https://ops:broker-pass-31bb@broker.example.com/v1"\n',
        encoding="utf-8")
    for extra in ((), ("--json",)):
        result = run_check("--config", str(path), *extra)
        assert result.returncode == 0, result.stderr
        for secret in ("feed-key-77aa", "broker-pass-31bb", "ops:"):
            assert secret not in result.stdout + result.stderr
        assert "feed.example.com/ws?apikey=" in result.stdout
        assert "broker.example.com/v1" in result.stdout


def test_b3_a_relative_store_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    """B3: started from another directory, the store is still the one beside the config."""
    folder = tmp_path / "etc"
    folder.mkdir()
    path = folder / "tg.toml"
    path.write_text('[store]\npath = "state/tradeguard.db"\n', encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_check("--config", str(path), "--json", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["store"]["path"] == str(folder / "state" / "tradeguard.db")


def test_c13_an_unrelated_tradeguard_variable_does_not_stop_check_config(
    valid_file: Path,
) -> None:
    """C13: TRADEGUARD_VERSION set by a deployment tool is warned about, not fatal."""
    result = run_check("--config", str(valid_file), env={"TRADEGUARD_VERSION": "1.4"})
    assert result.returncode == 0, result.stderr
    assert "TRADEGUARD_VERSION: ignored" in result.stderr
