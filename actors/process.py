"""`tradeguard run`: the process in the foreground, for systemd and supervisord.

SIGTERM and SIGINT stop everything in reverse order and exit 0; the supervisor
giving up exits 70 so the process manager restarts TradeGuard clean; SIGUSR1
logs every thread's stack; SIGHUP reads broker.token_file again. Under systemd
(NOTIFY_SOCKET), READY=1 is sent once the tree is up and WATCHDOG=1 only while
every child answers its liveness ping.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from types import FrameType

import pykka.debug

from actors.system import System
from tradeguard.config import Config, mask_url
from tradeguard.errors import TradeGuardError
from tradeguard.exits import EX_CONFIG, EX_OK, EX_SOFTWARE
from tradeguard.logs import setup_logging
from tradeguard.net.addresses import is_loopback

logger = logging.getLogger(__name__)

STARTUP_WAIT = 30.0


def run_service(cfg: Config) -> int:
    setup_logging()
    if not is_loopback(cfg.api.host) and not cfg.api.token:
        logger.error("api.host %s is not loopback: set api.token (or TRADEGUARD_API_TOKEN) "
                     "before exposing the close endpoint", cfg.api.host)
        return EX_CONFIG
    stop = _stop_on_signals()
    try:
        system = System(cfg, on_liveness=_watchdog)
    except TradeGuardError as exc:
        logger.error("Cannot start: %s", exc)
        return EX_CONFIG
    _warn_if_paper(cfg)
    _reload_token_on_sighup(system)
    try:
        _run(system, stop)
    finally:
        sd_notify("STOPPING=1")
        system.stop()
    return _exit_code(system)


def _stop_on_signals() -> threading.Event:
    """SIGTERM / SIGINT set the returned event; SIGUSR1 logs every thread's stack."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("Received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGUSR1, pykka.debug.log_thread_tracebacks)
    return stop


def _reload_token_on_sighup(system: System) -> None:
    """SIGHUP reads broker.token_file again (Kite's morning token), off the signal handler."""

    def on_hup(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=system.reload_token, name="sighup", daemon=True).start()

    signal.signal(signal.SIGHUP, on_hup)


def _watchdog(ok: bool) -> None:
    """WATCHDOG=1 only after a liveness round in which every child answered."""
    if ok:
        sd_notify("WATCHDOG=1")


def _run(system: System, stop: threading.Event) -> None:
    system.start()
    # READY=1 means every child has finished starting, not merely been started.
    if not system.wait_started(STARTUP_WAIT, stop) and not stop.is_set():
        logger.warning("Not every actor is up after %.0fs; running anyway, the supervisor "
                       "keeps restarting them", STARTUP_WAIT)
    sd_notify("READY=1")
    logger.info("TradeGuard running; feed %s", mask_url(system.cfg.feed.url))
    while not stop.wait(0.5):
        if system.supervisor.gave_up.is_set():
            return


def _exit_code(system: System) -> int:
    if system.supervisor.gave_up.is_set():
        logger.critical("Supervisor gave up; exiting %d so the process manager restarts us",
                        EX_SOFTWARE)
        return EX_SOFTWARE
    left = [t.name for t in threading.enumerate()
            if t is not threading.main_thread() and t.is_alive() and not t.daemon]
    if left:
        logger.error("Threads still running after stop: %s", ", ".join(left))
    logger.info("Stopped cleanly")
    return EX_OK


def _warn_if_paper(cfg: Config) -> None:
    """A paper broker closes nothing real: say so loudly, at start (finding A15)."""
    if cfg.broker.kind == "paper":
        logger.critical("[BROKER] broker.kind is \"paper\": closes are SIMULATED and no order "
                        "reaches a real broker. Real positions are NOT protected; set [broker] "
                        "kind (and url, token) to guard them.")


def sd_notify(state: str) -> bool:
    """Send one state line (e.g. "READY=1") to systemd; False when not under it or on error."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        logger.warning("sd_notify(%s) failed: %s", state, exc)
        return False
    return True
