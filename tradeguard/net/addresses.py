"""Pure helpers about addresses and names: which DNS answers are bad, how servers are written.

A DNS answer is the one thing on the network path nobody proved yet. A
sinkholing resolver answers 0.0.0.0, a captive portal or a spoofed UDP reply
answers a private address; following either blinds the feed, or hands the
broker token and the orders to whatever listens there (findings A10, D5).
SPEC §4 names the bad answers; `bad_reason` says which rule an address breaks.
"""

from __future__ import annotations

import ipaddress

# RFC 6761 / RFC 8375 / ICANN's .internal: names that are meant to live on this
# machine or this network, so a loopback or private answer for them is normal.
RESERVED_SUFFIXES = ("test", "localhost", "local", "internal", "lan")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_reserved_name(host: str) -> bool:
    """True for a name under .test, .localhost, .local, .internal or .lan (or one of them)."""
    last = host.rstrip(".").rpartition(".")[2].lower()
    return last in RESERVED_SUFFIXES


def bad_reason(host: str, address: str) -> str | None:
    """Why `address` is a bad DNS answer for `host` (SPEC §4), or None when it is usable."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "not an IP address"
    rules = [("unspecified", ip.is_unspecified), ("multicast", ip.is_multicast),
             ("broadcast", ip == _BROADCAST)]
    if not (is_reserved_name(host) or is_ip(host)):  # an IP literal is what the operator wrote
        rules += [("loopback, for a public name", ip.is_loopback),
                  ("link-local, for a public name", ip.is_link_local),
                  ("private, for a public name", ip.is_private)]
    return next((reason for reason, hit in rules if hit), None)


def parse_server(text: str) -> tuple[str, int]:
    """Split a DNS server written "ip" or "ip:port" (IPv6 as "[ip]:port")."""
    host, port = text, 53
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"expected [ip] or [ip]:port, got {text!r}")
        if rest:
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return host, port


def is_loopback(host: str) -> bool:
    """True for a host (an api.host) that only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
