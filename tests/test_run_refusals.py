"""`tradeguard run` and the API token, as a process (SPEC §3 [api], §6 Auth).

A non-loopback api.host without a configured token is refused with 78 before
anything starts; with a token it starts, guards its reads, and stops with 0 on
SIGTERM. Without a configured token on loopback, a token is generated once,
saved 0600 beside the store, reused by later starts, and never printed or
logged: the log names the file.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import running
from tests.support.net import free_port
from tests.support.waiting import wait_until
from tradeguard.exits import EX_CONFIG
from tradeguard.sim.exchange import SimExchange

API_TOKEN = "run-refusals-api-token-SECRET-42"
BROKER_TOKEN = "run-refusals-broker-token-SECRET-42"



def write_config(tmp_path: Path, exchange: SimExchange, *, host: str, token: str) -> int:
    """The config file for the service; returns its API port."""
    port = free_port(host)
    (tmp_path / "tradeguard.toml").write_text(f"""
[feed]
url = "{exchange.url_for('127.0.0.1')}"
[dns]
fallback_servers = []
[api]
host = "{host}"
port = {port}
token = "{token}"
[broker]
token = "{BROKER_TOKEN}"
[store]
path = "{tmp_path / 'data' / 'tg.db'}"
""")
    return port


class Service:
    """`tradeguard run` in a child process, its stderr kept in a file."""

    def __init__(self, tmp_path: Path) -> None:
        self.stderr_path = tmp_path / "stderr.txt"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEGUARD_")}
        with self.stderr_path.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tradeguard.cli", "run",
                 "--config", str(tmp_path / "tradeguard.toml")],
                stdout=subprocess.DEVNULL, stderr=err, env=env, text=True)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8")

    def get(self, port: int, path: str, token: str | None = None) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0  # not listening (yet)

    def wait_healthy(self, port: int) -> None:
        wait_until(lambda: self.proc.poll() is not None or self.get(port, "/healthz") == 200,
                   30, interval=0.05)
        assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{self.stderr}"

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[list[Service]]:
    """Started services, killed after the test if they are still running."""
    started: list[Service] = []
    yield started
    for svc in started:
        svc.kill()


def test_a_public_host_without_a_token_exits_78_and_starts_nothing(
    tmp_path: Path, exchange: SimExchange, service: list[Service]
) -> None:
    write_config(tmp_path, exchange, host="0.0.0.0", token="")
    svc = Service(tmp_path)
    service.append(svc)
    assert svc.proc.wait(30) == EX_CONFIG, svc.stderr
    assert "api.token" in svc.stderr
    assert not (tmp_path / "data").exists(), "no store and no generated token"
    assert exchange.accepted == 0, "the feed was never dialled"


def test_a_public_host_with_a_token_starts_and_guards_its_reads(
    tmp_path: Path, exchange: SimExchange, service: list[Service]
) -> None:
    port = write_config(tmp_path, exchange, host="0.0.0.0", token=API_TOKEN)
    svc = Service(tmp_path)
    service.append(svc)
    svc.wait_healthy(port)
    assert svc.get(port, "/api/v1/positions") == 401
    assert svc.get(port, "/api/v1/positions", token="wrong") == 401
    assert svc.get(port, "/api/v1/positions", token=API_TOKEN) == 200
    assert svc.get(port, "/metrics") == 200
    assert svc.terminate() == 0, svc.stderr
    assert "Stopped cleanly" in svc.stderr
    assert not (tmp_path / "data" / "api-token").exists(), "a configured token is not replaced"
    for secret in (API_TOKEN, BROKER_TOKEN):
        assert secret not in svc.stderr


def start_and_read_token(tmp_path: Path, exchange: SimExchange,
                         service: list[Service]) -> tuple[Service, int, str]:
    port = write_config(tmp_path, exchange, host="127.0.0.1", token="")
    svc = Service(tmp_path)
    service.append(svc)
    svc.wait_healthy(port)
    saved = tmp_path / "data" / "api-token"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    token = saved.read_text().strip()
    assert svc.get(port, "/api/v1/positions", token=token) == 200
    return svc, port, token


def test_c12_d3_a_generated_token_is_saved_0600_named_in_the_log_and_reused(
    tmp_path: Path, exchange: SimExchange, service: list[Service]
) -> None:
    """C12: a restart keeps the operator's token working. D3: only the file is logged."""
    svc, port, token = start_and_read_token(tmp_path, exchange, service)
    assert len(token) >= 32
    assert svc.terminate() == 0, svc.stderr
    first = svc.stderr
    assert token not in first, "the token went to stderr, that is, to the journal"
    assert f"saved it 0600 in {tmp_path / 'data' / 'api-token'}" in first
    again, port, reused = start_and_read_token(tmp_path, exchange, service)
    assert reused == token
    assert again.get(port, "/api/v1/positions", token=token) == 200
    assert again.terminate() == 0, again.stderr
    assert token not in again.stderr
    assert "reusing the one saved in" in again.stderr
    assert BROKER_TOKEN not in first + again.stderr


def test_a15_run_with_the_paper_broker_warns_loudly(
    tmp_path: Path, exchange: SimExchange, service: list[Service]
) -> None:
    """A15: the default broker.kind closes nothing real; `run` says so at start."""
    svc, _, _ = start_and_read_token(tmp_path, exchange, service)
    assert svc.terminate() == 0, svc.stderr
    warning = next(line for line in svc.stderr.splitlines() if "[BROKER]" in line)
    assert "CRITICAL" in warning and "SIMULATED" in warning and "NOT protected" in warning


def test_a_generated_token_is_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with running(tmp_path, api={"token": ""}) as h:
        token = h.system.api_token
        assert (tmp_path / "api-token").read_text().strip() == token
        assert h.call("GET", "/api/v1/positions", token=token)[0] == 200
        assert h.call("POST", "/api/v1/positions", {}, token="wrong")[0] == 401
        assert h.call("POST", "/api/v1/positions", {}, token=token)[0] == 400
    assert caplog.records
    assert token not in caplog.text
