"""The resolver ladder: system resolver, then fallback DNS servers, then stale addresses.

The system resolver gets a head start; if it fails or is still thinking when
the head start runs out, every fallback server is asked at once and the first
good answer wins, the system resolver included. When all of them fail, the
last addresses that worked (kept in an `AddressMemory`) are served stale, as
RFC 8767 does, so a resolver outage does not cut a connection we already knew
how to make.

An answer is kept for its TTL, clamped to [MIN_TTL, MAX_TTL] (SPEC §4), so in
normal operation no request waits for the ladder (finding A8); a stale answer
is kept for MIN_TTL, so an outage costs one run of the ladder per host and
half minute, not one per request. Bad answers (see `addresses.bad_reason`) are
dropped; a rung whose every address is bad has failed and the race goes on
(A10, D5). Only an address a connection reached (`confirm`) is remembered for
serve-stale: an answer that was never proven must not outlive its TTL (A10).

getaddrinfo cannot be cancelled, so each system lookup runs in a daemon thread
of its own: a hung one holds neither `resolve()` nor the process's exit, and
only a few may hang at once. Fallback queries end within `timeout`, so a
bounded ThreadPoolExecutor serves them.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from tradeguard.errors import ResolverError, TradeGuardError
from tradeguard.net.addresses import bad_reason, is_ip, parse_server

__all__ = ["MAX_PENDING_SYSTEM", "MAX_TTL", "MIN_TTL", "AddressMemory", "Resolution",
           "Resolver", "SystemLookup", "ask_server", "is_ip", "system_lookup"]

logger = logging.getLogger(__name__)

MAX_PENDING_SYSTEM = 4  # hung system lookups tolerated before the system rung counts as failed
_QUERIES_PER_SERVER = 4  # room for this many resolve() calls racing the fallbacks at once
MIN_TTL = 30.0  # SPEC §4; also RFC 8767's TTL for a stale answer, and a system answer's (unknown)
MAX_TTL = 300.0  # SPEC §4: a moved host is found again within five minutes
_REMEMBERED = 4  # confirmed addresses kept per host for serve-stale

SystemLookup = Callable[[str], list[str]]
Observer = Callable[[str, str], None]


class Check(NamedTuple):
    """One health check of a resolver: did it answer, how fast, and what went wrong."""

    ok: bool
    latency_ms: float | None
    error: str | None


@dataclass(frozen=True)
class Resolution:
    """Where a host's addresses came from: "system", "fallback:<server>", "stale", "literal".

    Callers try every address in turn (`tradeguard.net.pinned.open_pinned`);
    `ttl` is how long the resolver keeps this answer, already clamped.
    """

    host: str
    addresses: tuple[str, ...]
    via: str
    ttl: float = field(default=MIN_TTL, compare=False)


@dataclass(frozen=True)
class Answer:
    """What one rung said: addresses, and the TTL the server gave (None: unknown)."""

    addresses: list[str]
    ttl: float | None = None


def clamp_ttl(ttl: float | None) -> float:
    return MIN_TTL if ttl is None else min(MAX_TTL, max(MIN_TTL, float(ttl)))


def usable(host: str, addresses: list[str], source: str) -> list[str]:
    """The addresses that are not bad answers for host; ResolverError if none is."""
    good: list[str] = []
    for address in addresses:
        reason = bad_reason(host, address)
        if reason is None:
            good.append(address)
        else:
            logger.warning("[DNS] Ignoring %s for %s from %s: %s", address, host, source, reason)
    if not good:
        raise ResolverError(f"only bad answers for {host}: {', '.join(addresses)}")
    return good


class AddressMemory(Protocol):
    """Keeps the last good addresses of each host (tradeguard.store.Store is one)."""

    def load_addresses(self, host: str) -> list[str]: ...

    def save_addresses(self, host: str, addresses: list[str]) -> None: ...


def system_lookup(host: str) -> list[str]:
    """IPv4 addresses from the system resolver (getaddrinfo); raises OSError on failure."""
    infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def ask_server(server: str, host: str, timeout: float) -> Answer:
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
        chain = response.resolve_chaining()
        answer = chain.answer
    except dns.exception.Timeout as exc:
        raise ResolverError(f"{server} did not answer within {timeout:g}s") from exc
    except (dns.exception.DNSException, OSError, ValueError) as exc:
        raise ResolverError(f"{server}: {type(exc).__name__}: {exc}") from exc
    if answer is None:
        raise ResolverError(f"{server} has no A record for {host}")
    return Answer([rdata.address for rdata in answer], chain.minimum_ttl)


def ask_usable(server: str, host: str, timeout: float) -> Answer:
    """`ask_server`, less the bad answers; an answer with only bad ones is a failure."""
    answer = ask_server(server, host, timeout)
    return Answer(usable(host, answer.addresses, f"fallback {server}"), answer.ttl)


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
        clock: Callable[[], float] = time.monotonic,
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
        self._clock = clock  # ages the cached answers only
        self._cache: dict[str, tuple[Resolution, float]] = {}  # host -> (answer, expires)
        self._confirmed: dict[str, list[str]] = {}  # host -> addresses a connection reached

    def close(self) -> None:
        """Drop queued fallback queries; running ones end within `timeout` on their own."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)

    # The ladder -----------------------------------------------------------

    def resolve(self, host: str) -> Resolution:
        """Addresses for host, or ResolverError naming what each rung said.

        A cached answer younger than its TTL is returned without asking anyone.
        """
        if is_ip(host):
            self._observe("literal", "ok")
            return Resolution(host, (host,), "literal")
        cached = self._cached(host)
        if cached is not None:
            return cached
        resolution = self._ladder(host)
        with self._lock:
            self._cache[host] = (resolution, self._clock() + resolution.ttl)
        return resolution

    def confirm(self, host: str, ip: str) -> None:
        """A connection to `ip` for `host` succeeded: remember it for serve-stale."""
        if is_ip(host) or bad_reason(host, ip) is not None:
            return
        with self._lock:
            known = self._confirmed.get(host)
            if known is not None and known[:1] == [ip]:
                return  # nothing new: no write to the store on every request
        remembered = [ip] + [a for a in (known or self._load(host)) if a != ip]
        with self._lock:
            self._confirmed[host] = remembered[:_REMEMBERED]
        self._save(host, remembered[:_REMEMBERED])

    def forget(self, host: str) -> None:
        """Drop the cached answer for host: none of its addresses could be reached."""
        with self._lock:
            self._cache.pop(host, None)

    def _cached(self, host: str) -> Resolution | None:
        with self._lock:
            entry = self._cache.get(host)
            if entry is None:
                return None
            if self._clock() < entry[1]:
                return entry[0]
            del self._cache[host]
        return None

    def _ladder(self, host: str) -> Resolution:
        logger.info("[DNS] Attempting to resolve %s...", host)
        errors: list[str] = []
        resolution = self._race(host, errors)
        if resolution is None and self._serve_stale:
            resolution = self._stale(host, errors)
        if resolution is None:
            last_rung = "stale" if self._serve_stale else "fallback" if self._servers else "system"
            self._observe(last_rung, "error")
            raise ResolverError(f"cannot resolve {host}: {'; '.join(errors)}")
        self._observe(resolution.via.partition(":")[0], "ok")
        logger.info("[DNS] Resolved %s -> %s (via %s)", host, ", ".join(resolution.addresses),
                    resolution.via)
        return resolution

    def _race(self, host: str, errors: list[str]) -> Resolution | None:
        started = time.monotonic()
        system = self._start_system(host)
        sources: dict[Future[Answer], str] = {system: "system"}
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
                    answer = future.result()
                    winner = Resolution(host, tuple(answer.addresses), sources[future],
                                        clamp_ttl(answer.ttl))
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

    def _start_fallbacks(self, host: str) -> dict[Future[Answer], str]:
        try:
            return {
                self._pool.submit(ask_usable, server, host, self._timeout): f"fallback:{server}"
                for server in self._servers
            }
        except RuntimeError as exc:  # the pool refuses work once closed
            raise ResolverError("resolver is closed") from exc

    def _start_system(self, host: str) -> Future[Answer]:
        future: Future[Answer] = Future()
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

    def _run_system(self, host: str, future: Future[Answer]) -> None:
        try:
            if not future.set_running_or_notify_cancel():
                return
            addresses = self._system(host)
            if not addresses:
                raise ResolverError(f"no IPv4 address for {host}")
            future.set_result(Answer(usable(host, addresses, "the system resolver")))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting resolve() via the future
            future.set_exception(exc)
        finally:
            with self._lock:
                self._pending_system -= 1

    def _stale(self, host: str, errors: list[str]) -> Resolution | None:
        with self._lock:
            known = self._confirmed.get(host)
        # What an older version saved was never proven: it gets the bad-answer check too.
        addresses = [a for a in (known or self._load(host)) if bad_reason(host, a) is None]
        if not addresses:
            errors.append("stale: no last known address")
            return None
        logger.warning("[DNS] Every resolver failed for %s; using its last known addresses", host)
        return Resolution(host, tuple(addresses), "stale", MIN_TTL)

    def _load(self, host: str) -> list[str]:
        try:
            return self._memory.load_addresses(host) if self._memory else []
        except TradeGuardError as exc:
            logger.warning("[DNS] Cannot read last known addresses of %s: %s", host, exc)
            return []

    def _save(self, host: str, addresses: list[str]) -> None:
        if self._memory is None:
            return
        try:
            self._memory.save_addresses(host, addresses)
        except TradeGuardError as exc:  # losing the memory must not lose the connection
            logger.warning("[DNS] Cannot save addresses of %s: %s", host, exc)

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
            return Check(False, None, f"no answer after {self._timeout:g}s")
        error = future.exception()
        if error is not None:
            return Check(False, None, str(error))
        return Check(True, (time.monotonic() - started) * 1000, None)

    def check_server(self, server: str, host: str) -> Check:
        """(ok, latency_ms, error) of asking one fallback server for host."""
        started = time.monotonic()
        try:
            ask_server(server, host, self._timeout)
        except ResolverError as exc:
            return Check(False, None, str(exc))
        return Check(True, (time.monotonic() - started) * 1000, None)
