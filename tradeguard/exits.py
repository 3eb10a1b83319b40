"""Exit codes, one definition each (SPEC §2; the numbers are sysexits.h's)."""

from __future__ import annotations

EX_OK = 0
EX_VIOLATED = 1  # chaos: an invariant did not hold
EX_SOFTWARE = 70  # the supervisor gave up, or a tool failed: restart me
EX_CONFIG = 78  # bad configuration: nothing started, do not restart in a loop
EX_INTERRUPTED = 130  # Ctrl-C
