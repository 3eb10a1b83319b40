"""`tradeguard run` as a real child process, for tests that kill it.

The config is a TOML file written into the test's tmp_path; the API listens on
a free loopback port picked here. `start()` returns once `/healthz` answers
200, `stop()` sends SIGTERM and waits for the exit code, `kill9()` sends
SIGKILL. stderr goes to a file (a pipe nobody reads would fill and block the
service), so `stderr` can be read at any time, also after a crash. Restarting
on the same store is `start()` again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.net import call_json, free_port
from tradeguard.config import render_toml

API_TOKEN = "proc-api-token-SECRET-0123456789"
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0


class ServiceProcess:
    """One `tradeguard run --config <tmp_path>/tradeguard.toml`, started as often as asked."""

    def __init__(self, tmp_path: Path, sections: Mapping[str, Mapping[str, Any]]) -> None:
        self.port = free_port()
        raw: dict[str, dict[str, Any]] = {
            "api": {"host": "127.0.0.1", "port": self.port, "token": API_TOKEN},
            "store": {"path": str(tmp_path / "tradeguard.db")},
        }
        for section, values in sections.items():
            raw.setdefault(section, {}).update(values)
        self.config_path = tmp_path / "tradeguard.toml"
        self.config_path.write_text(render_toml(raw), encoding="utf-8")
        self._stderr_path = tmp_path / "tradeguard.stderr"
        self._stderr_path.write_bytes(b"")
        self._proc: subprocess.Popen[bytes] | None = None
        self.returncodes: list[int] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stderr(self) -> str:
        """Everything every run so far wrote to stderr."""
        return self._stderr_path.read_text(encoding="utf-8", errors="replace")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> ServiceProcess:
        if self.running:
            raise RuntimeError("the service is already running")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEGUARD_")}
        env["PYTHONUNBUFFERED"] = "1"
        with self._stderr_path.open("ab") as err:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "tradeguard.cli", "run", "--config",
                 str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env,
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if not self.running:
                raise AssertionError(f"tradeguard run exited early:\n{self.stderr[-3000:]}")
            try:
                if self.call("GET", "/healthz", token=None)[0] == 200:
                    return
            except OSError:
                pass  # not listening yet
            time.sleep(0.05)
        raise AssertionError(f"tradeguard run not ready in {READY_TIMEOUT}s:\n"
                             f"{self.stderr[-3000:]}")

    def stop(self) -> int:
        """SIGTERM and wait: the exit code of a clean stop."""
        return self._end(signal.SIGTERM)

    def kill9(self) -> int:
        return self._end(signal.SIGKILL)

    def _end(self, sig: signal.Signals) -> int:
        proc = self._proc
        if proc is None:
            raise RuntimeError("the service was never started")
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError(f"tradeguard run ignored {sig.name}:\n"
                                     f"{self.stderr[-3000:]}") from None
        self._proc = None
        self.returncodes.append(proc.returncode)
        return proc.returncode

    def call(self, method: str, path: str, body: Any = None, token: str | None = API_TOKEN,
             timeout: float = 30.0) -> tuple[int, Any]:
        """One API request; (status, parsed JSON). OSError if nothing listens."""
        return call_json(self.url + path, method, body, token, timeout)

    def positions(self) -> list[dict[str, Any]]:
        status, body = self.call("GET", "/api/v1/positions")
        assert status == 200, body
        return list(body["positions"])

    def health(self) -> dict[str, Any]:
        status, body = self.call("GET", "/api/v1/monitoring/connection-health")
        assert status == 200, body
        return dict(body)

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Whatever the test did, no child outlives it.
        if self._proc is not None:
            self.kill9()
