"""`tradeguard run` as a process: signals, exit codes, sd_notify."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.support.net import free_port
from tests.support.waiting import wait_until
from tradeguard.sim.exchange import SimExchange

TOKEN = "service-test-token-0123456789"


def write_config(tmp_path: Path, exchange: SimExchange, **extra: str) -> tuple[Path, int]:
    port = free_port()
    text = f"""
[feed]
url = "{exchange.url_for('127.0.0.1')}"
[dns]
fallback_servers = []
health_interval = 60
[api]
port = {port}
token = "{TOKEN}"
[store]
path = "{tmp_path / 'tg.db'}"
[supervisor]
liveness_interval = 0.5
liveness_timeout = 0.3
restart_backoff_min = 0.05
restart_backoff_max = 0.2
{extra.get('supervisor', '')}
[debug]
fault_injection = true
"""
    path = tmp_path / "tradeguard.toml"
    path.write_text(text)
    return path, port



def start(config: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tradeguard.cli", "run", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
    )


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def restarts(port: int, actor: str) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/monitoring/connection-health",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return int(json.loads(r.read())["actors"][actor]["restarts"])


def post(port: int, path: str, body: object) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST",
                                 data=json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {TOKEN}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return int(r.status)


def test_sigterm_stops_everything_and_exits_0(tmp_path: Path, exchange: SimExchange) -> None:
    config, port = write_config(tmp_path, exchange)
    notify_path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(notify_path)
        notify.settimeout(20)
        proc = start(config, {"NOTIFY_SOCKET": notify_path})
        try:
            states = []
            while "WATCHDOG=1" not in states:
                states.append(notify.recv(256).decode())
            assert states[0] == "READY=1"
            wait_until(lambda: healthy(port), 10)
            proc.send_signal(signal.SIGUSR1)  # thread dump, and keeps running
            assert healthy(port)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, err[-3000:]
        assert "Current state of supervisor" in err  # pykka's thread dump
        assert "Stopped cleanly" in err
        assert "Threads still running" not in err
        notify.settimeout(1)
        rest = []
        try:
            while True:
                rest.append(notify.recv(256).decode())
        except TimeoutError:
            pass
        assert "STOPPING=1" in rest


def test_restart_intensity_exceeded_exits_70(tmp_path: Path, exchange: SimExchange) -> None:
    config, port = write_config(tmp_path, exchange,
                                supervisor="max_restarts = 1\nwithin_seconds = 60")
    proc = start(config)
    try:
        wait_until(lambda: healthy(port) or proc.poll() is not None, 15)
        assert post(port, "/api/v1/debug/fault", {"actor": "CacheActor", "kind": "crash"}) == 202
        # The first crash must have happened and been restarted before the second is sent,
        # or both faults land in one incarnation's mailbox and only one crash happens.
        wait_until(lambda: restarts(port, "CacheActor") == 1 and healthy(port), 10)
        assert post(port, "/api/v1/debug/fault", {"actor": "CacheActor", "kind": "crash"}) == 202
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 70, err[-3000:]
    assert "giving up" in err
    assert "Threads still running" not in err


def test_bad_config_exits_78_and_starts_nothing(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    store = tmp_path / "never.db"
    config.write_text(f'[feed]\nurl = "http://x"\n[store]\npath = "{store}"\n[api]\nprot = 1\n')
    proc = subprocess.run([sys.executable, "-m", "tradeguard.cli", "run", "--config",
                           str(config)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 78
    assert "feed.url" in proc.stderr and "api.prot" in proc.stderr and "port" in proc.stderr
    assert not store.exists()


def test_config_from_environment(tmp_path: Path, exchange: SimExchange) -> None:
    config, port = write_config(tmp_path, exchange)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tradeguard.cli", "run"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, "TRADEGUARD_CONFIG": str(config)})
    try:
        wait_until(lambda: healthy(port) or proc.poll() is not None, 15)
        assert healthy(port)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
