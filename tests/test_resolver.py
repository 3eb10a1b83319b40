"""The resolver ladder against real DNS servers on loopback UDP."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tradeguard.errors import ResolverError
from tradeguard.net.addresses import bad_reason
from tradeguard.net.resolver import MAX_PENDING_SYSTEM, MAX_TTL, MIN_TTL, Resolution, Resolver
from tradeguard.sim.dns_server import DnsServer
from tradeguard.store import Store

HOST = "feed.tradeguard.test"  # RFC 6761: the system resolver never knows it
FEED_IP = "127.0.0.5"
BAD_MODES = ["refuse", "servfail", "nxdomain", "silent", "wrong_name", "no_a", "garbage"]


def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


class Clock:
    """A monotonic clock a test steps by hand."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def system_fails(host: str) -> list[str]:
    raise OSError(f"simulated failure for {host}")


@pytest.fixture
def dns_server() -> Iterator[Callable[[], DnsServer]]:
    started: list[DnsServer] = []

    def start() -> DnsServer:
        server = DnsServer().start()
        server.set_record(HOST, [FEED_IP])
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at teardown, so every hung system lookup of a test ends."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def hung(release: threading.Event) -> Callable[[str], list[str]]:
    def lookup(host: str) -> list[str]:
        release.wait(timeout=10)  # a ladder that waits for it fails slowly instead of hanging
        raise OSError("released at teardown")

    return lookup


@pytest.fixture
def resolver() -> Iterator[Callable[..., Resolver]]:
    made: list[Resolver] = []

    def make(servers: list[DnsServer], **options: object) -> Resolver:
        settings: dict[str, object] = {"timeout": 2.0, "head_start": 0.2, "serve_stale": False}
        settings.update(options)
        made.append(Resolver([s.address for s in servers], **settings))
        return made[-1]

    yield make
    for each in made:
        each.close()


def test_system_fails_then_fallback_answers(dns_server, resolver, caplog) -> None:
    caplog.set_level(logging.INFO, logger="tradeguard.net.resolver")
    server = dns_server()
    seen: list[tuple[str, str]] = []

    result = resolver([server], observer=lambda via, res: seen.append((via, res))).resolve(HOST)

    assert result == Resolution(HOST, (FEED_IP,), f"fallback:127.0.0.1:{server.port}")
    assert seen == [("fallback", "ok")]
    assert f"[DNS] Attempting to resolve {HOST}..." in caplog.messages
    assert any(m.startswith("[DNS] System DNS failed: ") for m in caplog.messages)
    assert f"[DNS] Resolved {HOST} -> {FEED_IP} (via {result.via})" in caplog.messages


def test_hung_system_loses_to_fallback_after_head_start(dns_server, resolver, hung, caplog) -> None:
    caplog.set_level(logging.INFO, logger="tradeguard.net.resolver")
    server = dns_server()
    started = time.monotonic()

    result = resolver([server], timeout=2.0, system=hung).resolve(HOST)

    assert time.monotonic() - started < 2.0
    assert result.via == f"fallback:{server.address}"
    assert server.queries == 1
    assert any(m.startswith("[DNS] System DNS failed: no answer after") for m in caplog.messages)


def test_system_answer_means_no_fallback_query(dns_server, resolver, tmp_path: Path) -> None:
    server = dns_server()
    store = Store(tmp_path / "t.db")
    seen: list[tuple[str, str]] = []
    make = resolver([server], memory=store, observer=lambda *a: seen.append(a),
                    system=lambda host: ["127.0.0.9"])

    result = make.resolve(HOST)

    assert result == Resolution(HOST, ("127.0.0.9",), "system")
    assert server.queries == 0
    assert seen == [("system", "ok")]
    assert store.load_addresses(HOST) == []  # A10: not before a connection proved it
    make.confirm(HOST, "127.0.0.9")
    assert store.load_addresses(HOST) == ["127.0.0.9"]


def test_system_still_wins_if_it_answers_first_after_head_start(dns_server, resolver) -> None:
    server = dns_server()
    server.mode = "silent"

    def late_system(host: str) -> list[str]:
        until(lambda: server.queries == 1)  # the head start is over: the race is on
        return ["127.0.0.9"]

    result = resolver([server], head_start=0.05, system=late_system).resolve(HOST)

    assert result.via == "system"


@pytest.mark.parametrize("mode", BAD_MODES)
def test_bad_answer_moves_on_to_the_next_server(dns_server, resolver, mode) -> None:
    bad, good = dns_server(), dns_server()
    bad.mode = mode
    with pytest.raises(ResolverError, match="cannot resolve"):
        resolver([bad], timeout=0.5, system=system_fails).resolve(HOST)

    result = resolver([bad, good], system=system_fails).resolve(HOST)

    assert result == Resolution(HOST, (FEED_IP,), f"fallback:{good.address}")
    until(lambda: bad.queries == 2)  # asked at the same time, so maybe not first


def test_first_good_answer_wins_when_a_server_is_slow(dns_server, resolver) -> None:
    slow, fast = dns_server(), dns_server()
    slow.delay = 2.0
    slow.set_record(HOST, ["127.0.0.7"])
    started = time.monotonic()

    result = resolver([slow, fast], timeout=3.0, system=system_fails).resolve(HOST)

    assert result == Resolution(HOST, (FEED_IP,), f"fallback:{fast.address}")
    assert time.monotonic() - started < 2.0
    until(lambda: slow.queries == 1)


def test_all_fail_serves_stale_from_the_store(dns_server, resolver, tmp_path: Path) -> None:
    server = dns_server()
    path = tmp_path / "t.db"
    with_store = Store(path)
    first = resolver([server], memory=with_store, system=system_fails)
    assert first.resolve(HOST).via.startswith("fallback:")
    first.confirm(HOST, FEED_IP)
    with_store.close()
    server.mode = "servfail"
    seen: list[tuple[str, str]] = []

    reopened = Store(path)  # the memory survives a restart
    result = resolver(
        [server], memory=reopened, serve_stale=True, system=system_fails,
        observer=lambda *a: seen.append(a),
    ).resolve(HOST)

    assert result == Resolution(HOST, (FEED_IP,), "stale")
    assert seen == [("stale", "ok")]
    reopened.close()


def test_all_fail_without_serve_stale_raises(dns_server, resolver, tmp_path: Path) -> None:
    server = dns_server()
    server.mode = "refuse"
    store = Store(tmp_path / "t.db")
    store.save_addresses(HOST, [FEED_IP])
    seen: list[tuple[str, str]] = []
    make = resolver([server], memory=store, serve_stale=False, system=system_fails,
                    observer=lambda *a: seen.append(a))

    with pytest.raises(ResolverError, match="REFUSED"):
        make.resolve(HOST)
    assert seen == [("fallback", "error")]


def test_stale_with_nothing_remembered_raises(dns_server, resolver, tmp_path: Path) -> None:
    server = dns_server()
    server.mode = "nxdomain"
    make = resolver([server], memory=Store(tmp_path / "t.db"), serve_stale=True,
                    system=system_fails)

    with pytest.raises(ResolverError, match="no last known address"):
        make.resolve(HOST)


@pytest.mark.parametrize("literal", ["203.0.113.7", "::1"])
def test_ip_literal_needs_no_lookup(dns_server, resolver, literal) -> None:
    server = dns_server()
    seen: list[tuple[str, str]] = []

    result = resolver([server], system=system_fails, observer=lambda *a: seen.append(a)).resolve(
        literal
    )

    assert result == Resolution(literal, (literal,), "literal")
    assert server.queries == 0
    assert seen == [("literal", "ok")]


def test_check_server_good_and_bad(dns_server, resolver) -> None:
    good, refusing, silent = dns_server(), dns_server(), dns_server()
    refusing.mode = "refuse"
    silent.mode = "silent"
    make = resolver([], timeout=0.3)

    ok, latency, error = make.check_server(good.address, HOST)
    assert (ok, error) == (True, None)
    assert latency is not None and latency >= 0
    assert make.check_server(refusing.address, HOST) == (
        False, None, f"{refusing.address} answered REFUSED"
    )
    assert make.check_server(silent.address, HOST)[:2] == (False, None)


def test_check_system(resolver, hung) -> None:
    assert resolver([], system=lambda host: ["127.0.0.9"]).check_system(HOST)[0] is True
    assert resolver([], system=system_fails).check_system(HOST) == (
        False, None, f"simulated failure for {HOST}"
    )
    assert resolver([], timeout=0.1, system=hung).check_system(HOST) == (
        False, None, "no answer after 0.1s"
    )


def test_hung_system_lookups_do_not_pile_up(dns_server, resolver, release, caplog) -> None:
    caplog.set_level(logging.INFO, logger="tradeguard.net.resolver")
    server = dns_server()
    hanging: list[threading.Thread] = []

    def hangs(host: str) -> list[str]:
        hanging.append(threading.current_thread())
        release.wait(timeout=10)
        raise OSError("released")

    clock = Clock()
    make = resolver([server], head_start=0.0, system=hangs, clock=clock)
    threads_before = threading.active_count()
    for _ in range(3 * MAX_PENDING_SYSTEM):
        assert make.resolve(HOST).via.startswith("fallback:")
        clock.now += MAX_TTL  # past the cached answer: every resolve() runs the ladder

    assert len(hanging) == MAX_PENDING_SYSTEM
    assert threading.active_count() - threads_before <= MAX_PENDING_SYSTEM + 4  # + query pool
    assert any("still hanging" in m for m in caplog.messages)
    release.set()  # once the hung lookups end, the system resolver is asked again
    until(lambda: not any(t.is_alive() for t in hanging))
    clock.now += MAX_TTL
    make.resolve(HOST)
    assert len(hanging) == MAX_PENDING_SYSTEM + 1


# The positive cache (A8) ------------------------------------------------------


def test_a8_an_answer_is_served_from_cache_for_its_ttl(dns_server, resolver, hung) -> None:
    """A8: a second resolve() within the TTL asks neither the system resolver nor DNS."""
    server = dns_server()
    server.set_record(HOST, [FEED_IP], ttl=120)
    lookups: list[str] = []

    def system(host: str) -> list[str]:
        lookups.append(host)
        return hung(host)

    clock = Clock()
    make = resolver([server], timeout=0.5, system=system, clock=clock)
    first = make.resolve(HOST)
    server.mode = "silent"  # UDP/53 filtered from here on
    clock.now += 119
    started = time.monotonic()

    again = make.resolve(HOST)

    assert time.monotonic() - started < 0.05
    assert again == first and again.ttl == 120
    assert (len(lookups), server.queries) == (1, 1)
    clock.now += 1  # the TTL is over: the ladder runs again
    with pytest.raises(ResolverError):
        make.resolve(HOST)
    assert len(lookups) == 2


@pytest.mark.parametrize(("ttl", "kept"), [(0, MIN_TTL), (5, MIN_TTL), (86_400, MAX_TTL)])
def test_a_ttl_is_clamped_to_30_and_300_seconds(dns_server, resolver, ttl, kept) -> None:
    server = dns_server()
    server.set_record(HOST, [FEED_IP], ttl=ttl)
    clock = Clock()
    make = resolver([server], system=system_fails, clock=clock)

    assert make.resolve(HOST).ttl == kept
    clock.now += kept - 0.001
    make.resolve(HOST)
    assert server.queries == 1
    clock.now += 0.001
    make.resolve(HOST)
    assert server.queries == 2


def test_a_system_answer_is_kept_for_the_minimum_ttl(resolver) -> None:
    lookups: list[str] = []
    clock = Clock()
    make = resolver([], system=lambda host: lookups.append(host) or ["127.0.0.9"], clock=clock)
    for step in (0, MIN_TTL - 1, 1):
        clock.now += step
        make.resolve(HOST)
    assert len(lookups) == 2


def test_a_stale_answer_is_kept_so_an_outage_runs_the_ladder_once(
    dns_server, resolver, tmp_path: Path
) -> None:
    server = dns_server()
    server.mode = "servfail"
    store = Store(tmp_path / "t.db")
    clock = Clock()
    make = resolver([server], memory=store, serve_stale=True, system=system_fails, clock=clock)
    make.confirm(HOST, FEED_IP)

    assert make.resolve(HOST).via == "stale"
    clock.now += MIN_TTL - 1
    assert make.resolve(HOST).via == "stale"
    assert server.queries == 1


def test_forget_drops_the_cached_answer(dns_server, resolver) -> None:
    server = dns_server()
    make = resolver([server], system=system_fails)
    make.resolve(HOST)
    make.forget(HOST)
    make.resolve(HOST)
    assert server.queries == 2


# Bad answers (A10, D5) and what is remembered ------------------------------------


PUBLIC = "broker.example.com"  # not under a reserved suffix


@pytest.mark.parametrize("bad", ["0.0.0.0", "224.0.0.251", "255.255.255.255"])
def test_a10_a_sinkhole_answer_loses_to_a_good_server(dns_server, resolver, bad) -> None:
    """A10: a fallback answering 0.0.0.0 (or multicast, broadcast) fast does not win the race."""
    sinkhole, good = dns_server(), dns_server()
    sinkhole.set_record(HOST, [bad])
    good.set_record(HOST, [FEED_IP])
    good.delay = 0.1  # the sinkhole answers first

    result = resolver([sinkhole, good], system=system_fails).resolve(HOST)

    assert result == Resolution(HOST, (FEED_IP,), f"fallback:{good.address}")


def test_a10_bad_addresses_are_dropped_from_a_mixed_answer(dns_server, resolver, caplog) -> None:
    """A10: the reproduction's answer ('0.0.0.0', '10.0.0.5') keeps only what is usable."""
    caplog.set_level(logging.WARNING, logger="tradeguard.net.resolver")
    server = dns_server()
    server.set_record(PUBLIC, ["0.0.0.0", "10.0.0.5", "93.184.216.34"])

    result = resolver([server], system=system_fails).resolve(PUBLIC)

    assert result.addresses == ("93.184.216.34",)
    assert any("Ignoring 0.0.0.0" in m and "unspecified" in m for m in caplog.messages)


@pytest.mark.parametrize("private", ["127.0.0.1", "10.0.0.5", "192.168.1.20", "172.16.0.9",
                                     "169.254.169.254"])
def test_d5_a_private_answer_for_a_public_name_is_refused(
    dns_server, resolver, tmp_path: Path, private
) -> None:
    """D5: a rogue fallback sends the plaintext broker's token to an internal address: refused."""
    server = dns_server()
    server.set_record(PUBLIC, [private])
    store = Store(tmp_path / "t.db")
    store.save_addresses(PUBLIC, ["93.184.216.34"])
    seen: list[tuple[str, str]] = []
    make = resolver([server], memory=store, serve_stale=True, system=system_fails,
                    observer=lambda *a: seen.append(a))

    result = make.resolve(PUBLIC)  # the all-bad fallback counts as failed: on to serve-stale

    assert result == Resolution(PUBLIC, ("93.184.216.34",), "stale")
    assert seen == [("stale", "ok")]


def test_d5_a_bad_system_answer_is_refused_too(resolver) -> None:
    """D5: whichever rung gives it, a private address for a public name is not followed."""
    make = resolver([], system=lambda host: ["10.0.0.5"])
    with pytest.raises(ResolverError, match="only bad answers"):
        make.resolve(PUBLIC)


@pytest.mark.parametrize("name", [HOST, "broker.localhost", "nas.local", "broker.internal",
                                  "broker.lan"])
def test_a_reserved_name_may_resolve_to_a_private_address(dns_server, resolver, name) -> None:
    server = dns_server()
    server.set_record(name, ["10.0.0.5", "127.0.0.1"])
    assert resolver([server], system=system_fails).resolve(name).addresses == (
        "10.0.0.5", "127.0.0.1"
    )


def test_a10_an_answer_is_remembered_only_after_a_connection_to_it(
    dns_server, resolver, tmp_path: Path
) -> None:
    """A10: resolving does not store; confirm() does, the confirmed address first."""
    server = dns_server()
    server.set_record(HOST, ["127.0.0.5", "127.0.0.6"])
    store = Store(tmp_path / "t.db")
    make = resolver([server], memory=store, system=system_fails)

    make.resolve(HOST)
    assert store.load_addresses(HOST) == []
    make.confirm(HOST, "127.0.0.6")
    make.confirm(HOST, "127.0.0.5")
    make.confirm(HOST, "0.0.0.0")  # never remembered, even if something did answer there

    assert store.load_addresses(HOST) == ["127.0.0.5", "127.0.0.6"]


def test_a10_a_poisoned_stored_address_is_not_served_stale(
    dns_server, resolver, tmp_path: Path
) -> None:
    """A10: what an older version stored unproven gets the bad-answer check before use."""
    server = dns_server()
    server.mode = "refuse"
    store = Store(tmp_path / "t.db")
    store.save_addresses(PUBLIC, ["0.0.0.0", "10.0.0.5"])
    make = resolver([server], memory=store, serve_stale=True, system=system_fails)

    with pytest.raises(ResolverError, match="no last known address"):
        make.resolve(PUBLIC)


def test_an_ip_literal_written_as_the_host_is_never_a_bad_answer() -> None:
    """A10/D5 apply to answers for names: 127.0.0.1 asked of the system resolver is itself."""
    assert bad_reason("127.0.0.1", "127.0.0.1") is None
    assert bad_reason("10.1.2.3", "10.1.2.3") is None
    assert bad_reason("0.0.0.0", "0.0.0.0") == "unspecified"
