"""The rules a key carries beside its type (Mopidy's `Integer(minimum=1)`, `Secret()`)."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "********"


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a key's value must be, beyond its type (Mopidy's `Integer(minimum=1)`, `Secret()`).

    `above` / `at_least` / `at_most` bound a number; `secret` masks the value in
    every printout and keeps it out of every error; `url` names the schemes a
    URL may have (and masks its credentials when printed); `registry` names the
    dotted registry the value must be a key of; `port` is a TCP port.
    """

    above: float | None = None
    at_least: float | None = None
    at_most: float | None = None
    secret: bool = False
    url: tuple[str, ...] = ()
    registry: str = ""
    port: bool = False
    min_length: int = 0

    def problems(self, key: str, value: Any) -> list[str]:
        found: list[str] = []
        if self.above is not None and value <= self.above:
            found.append(f"{key}: must be greater than {self.above:g}")
        if self.at_least is not None and value < self.at_least:
            found.append(f"{key}: must not be negative" if self.at_least == 0
                         else f"{key}: must be at least {self.at_least:g}")
        if self.at_most is not None and value > self.at_most:
            found.append(f"{key}: must be at most {self.at_most:g}")
        if self.port and not 0 < value < 65536:
            found.append(f"{key}: {value} is not a TCP port (1-65535)")
        if self.min_length and value and len(value) < self.min_length:
            found.append(f"{key}: must be at least {self.min_length} characters")
        if self.url and value:
            found += url_problems(key, value, self.url)
        if self.registry:
            found += registry_problems(key, value, self.registry)
        return found


def key(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING,
        **rule: Any) -> Any:
    """A config key: its default and its `Rule`."""
    return dataclasses.field(default=default, default_factory=factory,
                             metadata={"rule": Rule(**rule)})


def rule_of(f: dataclasses.Field[Any]) -> Rule:
    found = f.metadata.get("rule")
    return found if isinstance(found, Rule) else Rule()


def url_problems(key_name: str, url: str, schemes: tuple[str, ...]) -> list[str]:
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.hostname:
        return [f"{key_name}: must be a {' or '.join(s + '://' for s in schemes)} URL"]
    try:
        _ = parts.port
    except ValueError:
        return [f"{key_name}: bad port in {mask_url(url)!r}"]
    return []


def registry(dotted: str) -> tuple[str, ...]:
    """The names in a registry such as "tradeguard.brokers:KINDS" (imported when asked)."""
    module_name, _, attribute = dotted.partition(":")
    # Imported here, not at the top: the registries' modules import this one.
    return tuple(sorted(getattr(importlib.import_module(module_name), attribute)))


def registry_problems(key_name: str, value: str, dotted: str) -> list[str]:
    names = registry(dotted)
    if value in names:
        return []
    return [f"{key_name}: unknown {key_name.rpartition('.')[2]} {value!r} "
            f"(known: {', '.join(repr(n) for n in names)})"]


def mask_url(url: str) -> str:
    """`url` with its credentials masked: userinfo and every query value (finding D4).

    Feed vendors put API keys in the query string, and basic-auth userinfo
    can appear in a broker URL; neither may reach a log or a config dump.
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rpartition("@")[2]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(name, MASK) for name, _ in pairs], safe="*") if pairs else MASK
    fragment = MASK if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))
