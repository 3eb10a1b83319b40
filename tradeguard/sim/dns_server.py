"""A small authoritative DNS server on loopback UDP, with switchable misbehaviour.

The demo uses it as the fallback DNS server that knows the feed's `.test`
hostname; the tests use its modes to play every way a real server goes wrong.
One thread owns the socket. A delayed answer waits in a queue rather than in a
sleep, so a slow reply never holds up the next query nor `stop()`.
"""

from __future__ import annotations

import heapq
import ipaddress
import logging
import selectors
import socket
import threading
import time

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from tradeguard.sim.service import SimService

logger = logging.getLogger(__name__)

MODES = ("answer", "refuse", "servfail", "nxdomain", "silent", "wrong_name", "no_a", "garbage")
GARBAGE = b"\x00\x01this is not a DNS message"
WRONG_NAME = dns.name.from_text("elsewhere.invalid.")
_RCODES = {"refuse": dns.rcode.REFUSED, "servfail": dns.rcode.SERVFAIL,
           "nxdomain": dns.rcode.NXDOMAIN}
_MAX_DATAGRAM = 4096


class DnsServer(SimService):
    """Answers A queries for the names given to `set_record`, as `mode` says.

    Modes: "answer" (NXDOMAIN for unknown names), "refuse", "servfail",
    "nxdomain", "silent" (drops queries), "wrong_name" (an A record for another
    name), "no_a" (NOERROR, empty answer), "garbage" (bytes that are not DNS).
    All setters are safe to call from any thread while the server runs.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, ttl: int = 60) -> None:
        self._bind = (host, port)
        self._ttl = ttl
        self._lock = threading.Lock()
        self._records: dict[dns.name.Name, tuple[list[str], int]] = {}  # name -> (A, TTL)
        self._mode = "answer"
        self._delay = 0.0
        self._queries = 0
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()

    # Configuration -------------------------------------------------------

    def set_record(self, name: str, ips: list[str], ttl: int | None = None) -> None:
        """Answer `ips` (any IPv4 addresses, in this order) for name, with `ttl` seconds."""
        addresses = [str(ipaddress.IPv4Address(ip)) for ip in ips]
        with self._lock:
            self._records[dns.name.from_text(name)] = (addresses, self._ttl if ttl is None else ttl)

    @property
    def mode(self) -> str:
        with self._lock:
            return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        with self._lock:
            self._mode = mode

    @property
    def delay(self) -> float:
        with self._lock:
            return self._delay

    @delay.setter
    def delay(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("delay must not be negative")
        with self._lock:
            self._delay = seconds

    @property
    def queries(self) -> int:
        """Datagrams received since start, whatever the mode did with them."""
        with self._lock:
            return self._queries

    # Lifecycle -----------------------------------------------------------

    @property
    def port(self) -> int:
        if self._sock is None:
            raise RuntimeError("DnsServer is not started")
        return int(self._sock.getsockname()[1])

    @property
    def address(self) -> str:
        return f"{self._bind[0]}:{self.port}"

    def start(self) -> DnsServer:
        if self._thread is not None:
            raise RuntimeError("a DnsServer can be started once")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(self._bind)
        sock.setblocking(False)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name=f"dns-{self.port}", daemon=True)
        self._thread.start()
        logger.debug("DNS server listening on %s", self.address)
        return self

    def stop(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join()
        if self._sock is not None:
            self._sock.close()
        self._wake_r.close()
        self._wake_w.close()

    # The serving thread --------------------------------------------------

    def _serve(self) -> None:
        assert self._sock is not None
        due: list[tuple[float, int, bytes, tuple[str, int]]] = []  # (when, seq, reply, to)
        seq = 0
        with selectors.DefaultSelector() as selector:
            selector.register(self._sock, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                timeout = max(0.0, due[0][0] - time.monotonic()) if due else None
                selector.select(timeout)
                while due and due[0][0] <= time.monotonic():
                    _, _, reply, peer = heapq.heappop(due)
                    self._send(reply, peer)
                for reply, peer, delay in self._drain():
                    seq += 1
                    heapq.heappush(due, (time.monotonic() + delay, seq, reply, peer))

    def _drain(self) -> list[tuple[bytes, tuple[str, int], float]]:
        """Read every waiting datagram; return the replies with their delays."""
        assert self._sock is not None
        replies: list[tuple[bytes, tuple[str, int], float]] = []
        while True:
            try:
                wire, peer = self._sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return replies
            except OSError as exc:  # e.g. ICMP port unreachable from an earlier reply
                logger.debug("DNS server receive error: %s", exc)
                continue
            with self._lock:
                self._queries += 1
                mode, delay = self._mode, self._delay
            try:
                reply = self._reply(wire, mode)
            except Exception:  # one odd query must not take the server down
                logger.exception("DNS server failed on a query from %s", peer)
                continue
            if reply is not None:
                replies.append((reply, peer, delay))

    def _send(self, reply: bytes, peer: tuple[str, int]) -> None:
        assert self._sock is not None
        try:
            self._sock.sendto(reply, peer)
        except OSError as exc:
            logger.debug("DNS server could not answer %s: %s", peer, exc)

    def _reply(self, wire: bytes, mode: str) -> bytes | None:
        if mode == "silent":
            return None
        if mode == "garbage":
            return GARBAGE
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException as exc:
            logger.debug("DNS server dropped a malformed query: %s", exc)
            return None
        if len(query.question) != 1 or query.flags & dns.flags.QR:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if mode in _RCODES:
            response.set_rcode(_RCODES[mode])
        elif mode != "no_a":
            self._answer(query.question[0], response, wrong_name=mode == "wrong_name")
        return response.to_wire(want_shuffle=False)  # the order set_record gave, every time

    def _answer(
        self, question: dns.rrset.RRset, response: dns.message.Message, wrong_name: bool
    ) -> None:
        with self._lock:
            record = self._records.get(question.name)
        if record is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return
        addresses, ttl = record
        if question.rdtype != dns.rdatatype.A or question.rdclass != dns.rdataclass.IN:
            return  # NOERROR, no data: the name exists, with A records only
        owner = WRONG_NAME if wrong_name else question.name
        response.answer.append(dns.rrset.from_text_list(
            owner, ttl, dns.rdataclass.IN, dns.rdatatype.A, addresses
        ))
