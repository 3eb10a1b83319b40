"""Running TradeGuard for real: the alert rules, the dashboard, the systemd unit, supervisord.

The rules go through promtool (the Debian package prometheus; CI installs it),
the unit through systemd-analyze where it exists, and supervisor.conf through
a real supervisord that starts the real `tradeguard run` against a simulated
market in this process: killed with SIGKILL it comes back with its positions;
given a bad config it gives up instead of looping.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from supervisor.xmlrpc import SupervisorTransport

from tests.support.net import free_port
from tests.support.waiting import wait_until
from tradeguard.config import load_config, render_toml
from tradeguard.metrics import Metrics, Readings
from tradeguard.sim.scenario import SimMarket

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "docs" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "docs" / "grafana" / "tradeguard.json"
UNIT = ROOT / "deploy" / "tradeguard.service"
TOKEN = "deploy-test-token-0123456789"
SPEC_METRICS = (
    "feed_connected", "feed_reconnect_attempts_total", "feed_network_errors_total",
    "feed_ticks_total", "feed_rejected_total", "feed_last_message_age_seconds",
    "dns_resolutions_total", "dns_server_up", "price_age_seconds", "prices_stale",
    "positions_open", "positions_blind", "position_closes_total", "tick_to_decision_seconds",
    "actor_up", "actor_restarts_total", "notifications_total", "notifications_queued",
)

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool not installed (Debian package prometheus)")


# Prometheus rules and the Grafana dashboard ----------------------------------------


@needs_promtool
def test_alert_rules_pass_promtool() -> None:
    result = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


RULE_TESTS = """
rule_files: [{rules}]
evaluation_interval: 15s
tests:
  - interval: 15s
    input_series:
      - series: 'tradeguard_positions_blind{{job="tradeguard", instance="a"}}'
        values: '0 0 1 1'
      - series: 'tradeguard_feed_connected{{job="tradeguard", instance="a"}}'
        values: '0x10'
      - series: 'tradeguard_positions_open{{job="tradeguard", instance="a"}}'
        values: '1x10'
      - series: 'tradeguard_feed_connected{{job="tradeguard", instance="b"}}'
        values: '0x10'
      - series: 'tradeguard_positions_open{{job="tradeguard", instance="b"}}'
        values: '0x10'
    alert_rule_test:
      - eval_time: 15s
        alertname: TradeGuardPositionBlind
        exp_alerts: []
      - eval_time: 30s
        alertname: TradeGuardPositionBlind
        exp_alerts:
          - exp_labels: {{severity: critical, job: tradeguard, instance: a}}
      - eval_time: 2m
        alertname: TradeGuardFeedDown
        exp_alerts:
          - exp_labels: {{severity: critical, job: tradeguard, instance: a}}
"""


@needs_promtool
def test_alert_rules_fire_when_they_should(tmp_path: Path) -> None:
    # A blind position alerts at once; a dead feed only where positions are open.
    # promtool compares annotations too; the expressions, delays and labels are under
    # test here, so a copy of the rules without their (templated) texts is used.
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    bare = tmp_path / "rules.yml"
    bare.write_text(yaml.safe_dump(rules))
    tests = tmp_path / "rules_test.yml"
    tests.write_text(RULE_TESTS.format(rules=json.dumps(str(bare))))
    result = subprocess.run(["promtool", "test", "rules", str(tests)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def exported_names() -> set[str]:
    """Every sample name the real Metrics exports, with each labelled series touched."""
    metrics = Metrics()
    metrics.add_process()
    metrics.add_state(lambda: Readings(price_ages={"X": 1.0}, dns_servers_up={"system": True},
                                       actors_up={"FeedActor": True}))
    metrics.feed_rejected.labels(reason="bad_price").inc()
    metrics.dns_resolutions.labels(via="system", result="ok").inc()
    metrics.position_closes.labels(reason="stop_loss", result="ok").inc()
    metrics.actor_restarts.labels(actor="FeedActor").inc()
    metrics.notifications.labels(result="sent").inc()
    metrics.tick_to_decision.observe(0.001)
    text = metrics.exposition().decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines()
            if line and not line.startswith("#")}


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def test_rules_and_dashboard_use_only_metrics_tradeguard_exports() -> None:
    names = exported_names()
    for expr in rule_exprs() + dashboard_exprs():
        for used in re.findall(r"\b(?:tradeguard|process)_[a-z_]+", expr):
            assert used in names, f"{used} (in {expr!r}) is not exported; exported: {names}"


def test_the_dashboard_shows_every_spec_metric() -> None:
    shown = " ".join(dashboard_exprs())
    missing = [m for m in SPEC_METRICS if f"tradeguard_{m}" not in shown]
    assert not missing


# systemd ---------------------------------------------------------------------------


def unit_settings() -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def test_the_unit_holds_what_the_service_relies_on() -> None:
    unit = unit_settings()
    for key, value in {"Type": "notify", "WatchdogSec": "30", "Restart": "on-failure",
                       "RestartPreventExitStatus": "78", "ProtectSystem": "strict",
                       "NoNewPrivileges": "yes", "StateDirectory": "tradeguard",
                       "WorkingDirectory": "/var/lib/tradeguard"}.items():
        assert unit.get(key) == value, key
    example = load_config(ROOT / "deploy" / "example.toml", env={}, require_feed=True)
    assert example.store.path.startswith("/var/lib/tradeguard/")
    # WATCHDOG=1 goes out once per liveness interval: several must fit in WatchdogSec.
    assert example.supervisor.liveness_interval * 3 <= int(unit["WatchdogSec"])
    assert "--config /etc/tradeguard/tradeguard.toml" in unit["ExecStart"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verifies_the_unit() -> None:
    result = subprocess.run(["systemd-analyze", "verify", str(UNIT)], capture_output=True,
                            text=True, check=False)
    # The only complaint allowed: the venv of ExecStart is not installed on this machine.
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if line.strip() and "/opt/tradeguard/venv/bin/tradeguard" not in line]
    assert not problems, result.stdout + result.stderr


# A TradeGuard to run -------------------------------------------------------------------


@pytest.fixture
def market() -> Iterator[SimMarket]:
    with SimMarket({"BOSCHLTD": 735.0}, interval=0.2, seed=3) as sim:
        yield sim


def write_config(path: Path, market: SimMarket, store: Path, port: int,
                 **sections: dict[str, Any]) -> Path:
    raw = market.config_sections()
    # A literal IP: the process under test must not ask this host's resolver (off loopback).
    raw["feed"]["url"] = market.exchange.url_for("127.0.0.1")
    raw["feed"].update(reconnect_initial_delay=0.1, reconnect_max_delay=0.5, ping_interval=1.0,
                       ping_timeout=0.5, silence_timeout=3.0, connect_timeout=2.0)
    raw["dns"].update(system_head_start=0.05, timeout=1.0)
    raw["api"] = {"port": port, "token": TOKEN}
    raw["store"] = {"path": str(store)}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    path.write_text(render_toml(raw))
    load_config(path, env={}, require_feed=True)  # the test's own config must be valid
    return path


def call(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except OSError:
        return 0, None


def boschltd(port: int) -> dict[str, Any] | None:
    status, body = call(port, "GET", "/api/v1/positions")
    rows = [p for p in body["positions"] if p["symbol"] == "BOSCHLTD"] if status == 200 else []
    return rows[-1] if rows else None


# sd_notify, as systemd sees it -------------------------------------------------------------


def test_run_tells_systemd_ready_watchdog_and_stopping(market: SimMarket, tmp_path: Path) -> None:
    config = write_config(tmp_path / "tg.toml", market, tmp_path / "tg.db", free_port(),
                          supervisor={"liveness_interval": 0.5, "liveness_timeout": 0.3})
    with tempfile.TemporaryDirectory(prefix="tg-") as short, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        address = os.path.join(short, "notify")  # AF_UNIX paths must stay short
        notify.bind(address)
        notify.settimeout(30)
        env = dict(os.environ, NOTIFY_SOCKET=address)
        proc = subprocess.Popen([sys.executable, "-m", "tradeguard.cli", "run", "--config",
                                 str(config)], env=env, stderr=subprocess.DEVNULL)
        try:
            received: list[str] = []
            while received.count("WATCHDOG=1") < 2:
                received.append(notify.recv(256).decode())
            assert received.index("READY=1") < received.index("WATCHDOG=1")
            proc.send_signal(signal.SIGTERM)
            while "STOPPING=1" not in received:
                received.append(notify.recv(256).decode())
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# supervisord ------------------------------------------------------------------------------


def program_section(command: str, log: Path, directory: Path) -> dict[str, str]:
    """The shipped [program:tradeguard], pointed at this test's command, files and user."""
    parser = configparser.RawConfigParser()
    parser.read(ROOT / "supervisor.conf")
    section = dict(parser["program:tradeguard"])
    section.pop("user")  # the test runs as whoever runs it
    section.update(command=command, directory=str(directory), stdout_logfile=str(log))
    return section


@contextlib.contextmanager
def supervisord(tmp_path: Path, programs: dict[str, dict[str, str]]) -> Iterator[Any]:
    sock = tmp_path / "supervisor.sock"
    conf = configparser.RawConfigParser()
    conf["unix_http_server"] = {"file": str(sock)}
    conf["supervisord"] = {"nodaemon": "true", "logfile": str(tmp_path / "supervisord.log"),
                           "pidfile": str(tmp_path / "supervisord.pid"),
                           "childlogdir": str(tmp_path)}
    conf["rpcinterface:supervisor"] = {
        "supervisor.rpcinterface_factory": "supervisor.rpcinterface:make_main_rpcinterface"}
    conf["supervisorctl"] = {"serverurl": f"unix://{sock}"}
    for name, section in programs.items():
        conf[f"program:{name}"] = section
    path = tmp_path / "supervisord.conf"
    with path.open("w") as fh:
        conf.write(fh)
    proc = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-c", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rpc = xmlrpc.client.ServerProxy(
        "http://localhost", transport=SupervisorTransport(None, None, f"unix://{sock}"))
    try:
        wait_until(lambda: sock.exists(), 20, message="supervisord did not start")
        yield rpc
    finally:
        with contextlib.suppress(OSError, xmlrpc.client.Fault):
            rpc.supervisor.shutdown()
        try:
            proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def state(rpc: Any, name: str) -> dict[str, Any]:
    info: dict[str, Any] = rpc.supervisor.getProcessInfo(name)
    return info


def test_supervisord_restarts_a_killed_tradeguard_and_leaves_a_bad_config_alone(
    market: SimMarket, tmp_path: Path,
) -> None:
    port = free_port()
    good = write_config(tmp_path / "good.toml", market, tmp_path / "state" / "tg.db", port)
    bad = tmp_path / "bad.toml"
    bad.write_text('[feed]\nurl = "http://not-a-websocket.test/"\nsymbol = ["X"]\n')
    run = f"{sys.executable} -m tradeguard.cli run --config"
    programs = {
        "tradeguard": program_section(f"{run} {good}", tmp_path / "tradeguard.log", tmp_path),
        "badconfig": program_section(f"{run} {bad}", tmp_path / "badconfig.log", tmp_path),
    }
    with supervisord(tmp_path, programs) as rpc:
        wait_until(lambda: state(rpc, "tradeguard")["statename"] == "RUNNING", 30,
                   message="tradeguard never reached RUNNING")
        wait_until(lambda: call(port, "GET", "/healthz")[0] == 200, 30)
        status, opened = call(port, "POST", "/api/v1/positions", {
            "symbol": "BOSCHLTD", "side": "long", "quantity": 10, "entry_price": 735.0,
            "stop_loss": 700.0, "take_profit": None})
        assert status == 201, opened

        first = state(rpc, "tradeguard")["pid"]
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: state(rpc, "tradeguard")["pid"] not in (0, first), 30,
                   message="supervisord did not restart tradeguard")
        wait_until(lambda: call(port, "GET", "/healthz")[0] == 200, 30)
        position = boschltd(port)
        assert position is not None and position["state"] == "open"
        assert position["opened_at"] == opened["opened_at"]

        # The new process guards it: a breach closes it.
        market.push("BOSCHLTD", 690.0)
        wait_until(lambda: (boschltd(port) or {}).get("state") == "closed", 30,
                   message=f"not closed after the restart: {boschltd(port)}")

        # A bad config: a few quick retries, then FATAL for good, never a loop.
        wait_until(lambda: state(rpc, "badconfig")["statename"] in ("FATAL", "EXITED"), 40,
                   message=f"badconfig: {state(rpc, 'badconfig')}")
        ctl = subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c",
                              str(tmp_path / "supervisord.conf"), "status", "badconfig"],
                             capture_output=True, text=True, check=False)
        assert re.search(r"badconfig\s+(FATAL|EXITED)", ctl.stdout), ctl.stdout
        log = (tmp_path / "badconfig.log").read_text()
        assert "feed.symbol: unknown key (did you mean 'symbols'?)" in log
        assert log.count("invalid configuration") <= 4  # the first try and startretries=3

        # A clean stop is SIGTERM and exit 0, which supervisord does not restart.
        rpc.supervisor.stopProcess("tradeguard")
        stopped = state(rpc, "tradeguard")
        assert stopped["statename"] == "STOPPED" and stopped["exitstatus"] == 0
        assert "Stopped cleanly" in (tmp_path / "tradeguard.log").read_text()
