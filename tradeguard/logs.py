"""Logging set up once at start: plain text to stderr, one event a line.

One event a line is also what keeps the log honest: text a client supplies
(a request path, a symbol) could otherwise carry a newline and forge a line
of its own (finding D1). `printable` escapes control characters; the web
layer applies it to what it logs, and the formatter applies it to every
message once more, so no caller can forget. Tracebacks keep their lines.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)-8s %(name)s: %(message)s"
# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
_UNSAFE = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_UNSAFE.update({0x2028: "\\u2028", 0x2029: "\\u2029"})


def printable(text: str) -> str:
    """`text` with every control character escaped as \\xNN (tab too)."""
    return text.translate(_UNSAFE)


class OneLineFormatter(logging.Formatter):
    """Escapes control characters in the message; the traceback, if any, follows it."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)


def setup_logging(level: int = logging.INFO) -> None:
    root = logging.getLogger()
    if any(getattr(h, "_tradeguard", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(FORMAT))
    handler._tradeguard = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("pykka").setLevel(logging.WARNING)
    logging.getLogger("waitress").setLevel(logging.WARNING)
