"""The resolver ladder: system resolver, then fallback DNS servers, then stale addresses.

(Being written: see the resolver issue. The Resolution type is the contract.)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resolution:
    """Where a host's addresses came from: "system", "fallback:<server>", "stale", "literal"."""

    host: str
    addresses: tuple[str, ...]
    via: str

    @property
    def address(self) -> str:
        return self.addresses[0]
