"""The resolver ladder: system resolver, then fallback DNS servers, then stale addresses.

The system resolver gets a head start; if it fails or is still thinking when
the head start runs out, every fallback server is asked at once and the first
good answer wins, the system resolver included. When all of them fail, the
last addresses that worked (kept in an `AddressMemory`) are served stale, as
RFC 8767 does, so a resolver outage does not cut a connection we already knew
how to make.

getaddrinfo cannot be cancelled, so each system lookup runs in a daemon thread
of its own: a hung one holds neither `resolve()` nor the process's exit, and
only a few may hang at once. Fallback queries end within `timeout`, so a
bounded ThreadPoolExecutor serves them.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Protocol

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from tradeguard.config import parse_server
from tradeguard.errors import ResolverError, TradeGuardError

logger = logging.getLogger(__name__)

MAX_PENDING_SYSTEM = 4  # hung system lookups tolerated before the system rung counts as failed
_QUERIES_PER_SERVER = 4  # room for this many resolve() calls racing the fallbacks at once

SystemLookup = Callable[[str], list[str]]
Observer = Callable[[str, str], None]
Check = tuple[bool, float | None, str | None]


@dataclass(frozen=True)
class Resolution:
    """Where a host's addresses came from: "system", "fallback:<server>", "stale", "literal"."""

    host: str
    addresses: tuple[str, ...]
    via: str

    @property
    def address(self) -> str:
        return self.addresses[0]


class AddressMemory(Protocol):
    """Keeps the last good addresses of each host (tradeguard.store.Store is one)."""

    def load_addresses(self, host: str) -> list[str]: ...

    def save_addresses(self, host: str, addresses: list[str]) -> None: ...


def system_lookup(host: str) -> list[str]:
    """IPv4 addresses from the system resolver (getaddrinfo); raises OSError on failure."""
    infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def ask_server(server: str, host: str, timeout: float) -> list[str]:
    """The A addresses one DNS server ("ip" or "ip:port") gives for host.

    Only a NOERROR answer with A records for the asked name counts (a CNAME
    chain inside the answer that starts at the asked name is followed, as real
    servers send for CDN-hosted names). Anything else raises ResolverError.
    """
    try:
        ip, port = parse_server(server)
        qname = dns.name.from_text(host)
        query = dns.message.make_query(qname, dns.rdatatype.A, dns.rdataclass.IN)
        response = dns.query.udp(query, ip, timeout=timeout, port=port)
        rcode = response.rcode()
        if rcode != dns.rcode.NOERROR:
            raise ResolverError(f"{server} answered {dns.rcode.to_text(rcode)}")
        if not isinstance(response, dns.message.QueryMessage):
            raise ResolverError(f"{server} answered with opcode {response.opcode()}")
        answer = response.resolve_chaining().answer
    except dns.exception.Timeout as exc:
        raise ResolverError(f"{server} did not answer within {timeout:g}s") from exc
    except (dns.exception.DNSException, OSError, ValueError) as exc:
        raise ResolverError(f"{server}: {type(exc).__name__}: {exc}") from exc
    if answer is None:
        raise ResolverError(f"{server} has no A record for {host}")
    return [rdata.address for rdata in answer]


class Resolver:
    """Resolves hostnames down the ladder; `resolve()` is safe to call from many threads."""

    def __init__(
        self,
        fallback_servers: list[str],
        timeout: float,
        head_start: float,
        serve_stale: bool,
        *,
        memory: AddressMemory | None = None,
        system: SystemLookup | None = None,
        observer: Observer | None = None,
    ) -> None:
        self._servers = list(fallback_servers)
        self._timeout = timeout
        self._head_start = head_start
        self._serve_stale = serve_stale
        self._memory = memory
        self._system = system or system_lookup
        self._observer = observer
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, len(self._servers)) * _QUERIES_PER_SERVER,
            thread_name_prefix="dns-fallback",
        )
        self._lock = threading.Lock()
        self._pending_system = 0
        self._closed = False

    def close(self) -> None:
        """Drop queued fallback queries; running ones end within `timeout` on their own."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)

    # The ladder -----------------------------------------------------------

    def resolve(self, host: str) -> Resolution:
        """Addresses for host, or ResolverError naming what each rung said."""
        if is_ip(host):
            self._observe("literal", "ok")
            return Resolution(host, (host,), "literal")
        logger.info("[DNS] Attempting to resolve %s...", host)
        errors: list[str] = []
        resolution = self._race(host, errors)
        if resolution is not None:
            self._remember(resolution)
        elif self._serve_stale:
            resolution = self._stale(host, errors)
        if resolution is None:
            last_rung = "stale" if self._serve_stale else "fallback" if self._servers else "system"
            self._observe(last_rung, "error")
            raise ResolverError(f"cannot resolve {host}: {'; '.join(errors)}")
        self._observe(resolution.via.partition(":")[0], "ok")
        logger.info("[DNS] Resolved %s -> %s (via %s)", host, resolution.address, resolution.via)
        return resolution

    def _race(self, host: str, errors: list[str]) -> Resolution | None:
        started = time.monotonic()
        system = self._start_system(host)
        sources: dict[Future[list[str]], str] = {system: "system"}
        wait([system], timeout=self._head_start)
        if not (system.done() and system.exception() is None):
            sources.update(self._start_fallbacks(host))
        deadline = time.monotonic() + self._timeout
        pending = set(sources)
        winner: Resolution | None = None
        while pending and winner is None:
            done, pending = wait(
                pending, timeout=max(0.0, deadline - time.monotonic()), return_when=FIRST_COMPLETED
            )
            if not done:
                break
            # The system resolver wins a tie: its answer is the one the OS would use.
            for future in sorted(done, key=lambda f: sources[f] != "system"):
                error = future.exception()
                if error is None:
                    winner = Resolution(host, tuple(future.result()), sources[future])
                    break
                self._failed(sources[future], str(error), errors)
        for future in pending:
            future.cancel()  # queued fallback queries only; a running one ends on its own
        if not system.done():
            self._failed("system", f"no answer after {time.monotonic() - started:.2f}s", errors)
        return winner

    def _failed(self, source: str, error: str, errors: list[str]) -> None:
        errors.append(f"{source}: {error}")
        if source == "system":
            logger.warning("[DNS] System DNS failed: %s", error)
        else:
            logger.info("[DNS] Fallback %s failed: %s", source.partition(":")[2], error)

    def _start_fallbacks(self, host: str) -> dict[Future[list[str]], str]:
        try:
            return {
                self._pool.submit(ask_server, server, host, self._timeout): f"fallback:{server}"
                for server in self._servers
            }
        except RuntimeError as exc:  # the pool refuses work once closed
            raise ResolverError("resolver is closed") from exc

    def _start_system(self, host: str) -> Future[list[str]]:
        future: Future[list[str]] = Future()
        with self._lock:
            if self._closed:
                raise ResolverError("resolver is closed")
            if self._pending_system >= MAX_PENDING_SYSTEM:
                future.set_exception(ResolverError(
                    f"{self._pending_system} earlier system lookups are still hanging"
                ))
                return future
            self._pending_system += 1
        threading.Thread(
            target=self._run_system, args=(host, future), name="dns-system", daemon=True
        ).start()
        return future

    def _run_system(self, host: str, future: Future[list[str]]) -> None:
        try:
            if not future.set_running_or_notify_cancel():
                return
            addresses = self._system(host)
            if not addresses:
                raise ResolverError(f"no IPv4 address for {host}")
            future.set_result(addresses)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting resolve() via the future
            future.set_exception(exc)
        finally:
            with self._lock:
                self._pending_system -= 1

    def _stale(self, host: str, errors: list[str]) -> Resolution | None:
        addresses: list[str] = []
        try:
            addresses = self._memory.load_addresses(host) if self._memory else []
        except TradeGuardError as exc:
            logger.warning("[DNS] Cannot read last known addresses of %s: %s", host, exc)
        if not addresses:
            errors.append("stale: no last known address")
            return None
        logger.warning("[DNS] Every resolver failed for %s; using its last known addresses", host)
        return Resolution(host, tuple(addresses), "stale")

    def _remember(self, resolution: Resolution) -> None:
        if self._memory is None:
            return
        try:
            self._memory.save_addresses(resolution.host, list(resolution.addresses))
        except TradeGuardError as exc:  # losing the memory must not lose the answer
            logger.warning("[DNS] Cannot save addresses of %s: %s", resolution.host, exc)

    def _observe(self, via: str, result: str) -> None:
        if self._observer is not None:
            self._observer(via, result)

    # Health checks (DnsHealthActor) ---------------------------------------

    def check_system(self, host: str) -> Check:
        """(ok, latency_ms, error) of one system lookup, given up after `timeout`."""
        started = time.monotonic()
        future = self._start_system(host)
        wait([future], timeout=self._timeout)
        if not future.done():
            return False, None, f"no answer after {self._timeout:g}s"
        error = future.exception()
        if error is not None:
            return False, None, str(error)
        return True, (time.monotonic() - started) * 1000, None

    def check_server(self, server: str, host: str) -> Check:
        """(ok, latency_ms, error) of asking one fallback server for host."""
        started = time.monotonic()
        try:
            ask_server(server, host, self._timeout)
        except ResolverError as exc:
            return False, None, str(exc)
        return True, (time.monotonic() - started) * 1000, None
