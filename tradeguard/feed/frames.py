"""Cutting server frames out of received bytes (RFC 6455), within bounds.

The socket is drained with large reads and frames are cut out of the buffer
here: websocket-client reads every frame with two or three system calls of
exactly the bytes it needs, which costs more than all the rest of handling a
one-tick frame. Data frames come out (TEXT as str, BINARY as bytes); control
frames are handled here: a ping is answered through `answer`, a pong counted,
a close echoed and raised.

What a broken or hostile peer can make this hold is bounded (finding C10): a
message over `max_message_bytes` is dropped from the header that says so, its
payload discarded as it arrives and never held whole, and counted in
`refused`; a message may have at most MAX_FRAGMENTS parts, and a flood of
empty ones is neither stored nor summed again.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable

from tradeguard.errors import FeedError
from tradeguard.feed import Frame

logger = logging.getLogger(__name__)

_CONT, TEXT, BINARY = 0x0, 0x1, 0x2
_CLOSE, PING, PONG = 0x8, 0x9, 0xA
_FIN_TEXT = 0x80 | TEXT

MAX_FRAGMENTS = 1024  # parts of one message; a flood of empty ones is a broken peer

Answer = Callable[[bytes, int], None]  # sends a control frame: (payload, opcode)


class FrameCutter:
    """What one connection received and has not handed on yet. One thread at a time."""

    def __init__(self, answer: Answer, max_message_bytes: int) -> None:
        self.pongs = 0
        self.refused = 0
        self._answer = answer
        self._max = max_message_bytes
        self._data = b""
        self._fragments: list[bytes] = []  # a fragmented message so far (RFC 6455 §5.4)
        self._fragment_opcode = 0
        self._fragment_bytes = 0
        self._fragment_count = 0
        self._dropping = False  # the message being joined is over the limit: parts discarded
        self._skip = 0  # payload bytes of a refused frame still to discard

    def append(self, chunk: bytes) -> None:
        self._data = self._data + chunk if self._data else chunk

    def take_refused(self) -> int:
        """Messages dropped for size since the last call (a protocol counts them "too_large")."""
        refused, self.refused = self.refused, 0
        return refused

    def take(self, batch: list[Frame], max_frames: int, budget: int) -> int:
        """Move complete frames from the buffer to `batch`; the buffer bytes used."""
        data, pos, end, limit = self._data, 0, len(self._data), self._max
        try:
            if self._skip:  # the rest of a refused frame: dropped as it arrives
                pos = min(end, self._skip)
                self._skip -= pos
            while len(batch) < max_frames and pos < budget and end - pos >= 2:
                head, length = _frame_size(data, pos, end)
                if length > limit:
                    pos = self._refuse(data[pos], pos + head, length, end)
                    continue
                if head == 0 or end - pos < head + length:
                    break  # the rest of this frame is still on its way
                first = data[pos]
                payload = data[pos + head:pos + head + length]
                pos += head + length
                if first == _FIN_TEXT and not self._fragment_opcode:
                    batch.append(_text(payload))  # the usual frame, first
                else:
                    self._frame(first, payload, batch)
        finally:
            self._data = data[pos:]
        return pos

    def _frame(self, first: int, payload: bytes, batch: list[Frame]) -> None:
        fin, opcode = first & 0x80, first & 0x0F
        if first & 0x70:
            raise _broken("reserved bits set without an extension")
        if opcode in (TEXT, BINARY):
            if self._fragment_opcode:
                raise _broken("a new message inside a fragmented one")
            if fin:
                batch.append(_message(opcode, payload))
            else:
                self._start_fragments(opcode)
                self._fragment(payload)
        elif opcode == _CONT:
            if not self._fragment_opcode:
                raise _broken("a continuation frame with no message to continue")
            self._fragment(payload)
            if fin:
                self._end_fragments(batch)
        elif opcode in (PING, PONG, _CLOSE):
            if not fin or len(payload) > 125:
                raise _broken("a fragmented or oversized control frame")
            self._control(opcode, payload)
        else:
            raise _broken(f"unknown opcode {opcode}")

    def _start_fragments(self, opcode: int) -> None:
        self._fragment_opcode, self._dropping = opcode, False
        self._fragments, self._fragment_bytes, self._fragment_count = [], 0, 0

    def _fragment(self, payload: bytes) -> None:
        self._fragment_count += 1
        if self._fragment_count > MAX_FRAGMENTS:
            raise _broken(f"a message in more than {MAX_FRAGMENTS} fragments")
        if payload and not self._dropping:
            self._fragment_bytes += len(payload)
            if self._fragment_bytes > self._max:
                self._drop_message()
            else:
                self._fragments.append(payload)

    def _drop_message(self) -> None:
        """The message being joined is over the limit: count it, drop what it holds."""
        self._dropping, self._fragments = True, []
        self.refused += 1

    def _end_fragments(self, batch: list[Frame]) -> None:
        if not self._dropping:
            batch.append(_message(self._fragment_opcode, b"".join(self._fragments)))
        self._fragments, self._fragment_opcode, self._dropping = [], 0, False

    def _refuse(self, first: int, start: int, length: int, end: int) -> int:
        """Drop a data frame over the limit from its header on; where reading goes on.

        Its payload is discarded as it arrives (never held), and the message
        it belongs to counts once in `refused`.
        """
        fin, opcode = first & 0x80, first & 0x0F
        if first & 0x70 or opcode not in (TEXT, BINARY, _CONT):
            raise _broken(f"an oversized or unknown frame (opcode {opcode})")
        if opcode == _CONT:
            if not self._fragment_opcode:
                raise _broken("a continuation frame with no message to continue")
            if not self._dropping:
                self._drop_message()
        elif self._fragment_opcode:
            raise _broken("a new message inside a fragmented one")
        else:
            self._start_fragments(opcode)
            self._drop_message()
        if fin:
            self._fragments, self._fragment_opcode, self._dropping = [], 0, False
        here = min(end - start, length)
        self._skip = length - here
        return start + here


    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == PING:
            self._answer(payload, PONG)
        elif opcode == PONG:
            self.pongs += 1
        else:
            reason = _close_reason(payload)
            logger.info("Feed closed the connection: %s", reason)
            self._answer(payload[:2], _CLOSE)  # echo the status, as RFC 6455 §5.5.1 asks
            raise FeedError(f"feed closed the connection: {reason}")


def _frame_size(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """(header bytes, payload bytes) of the frame at `pos`; (0, 0) if its header is cut."""
    second = data[pos + 1]
    if second & 0x80:
        raise _broken("a masked frame from the server")
    length = second & 0x7F
    if length < 126:
        return 2, length
    head = 4 if length == 126 else 10
    if end - pos < head:
        return 0, 0
    return head, int.from_bytes(data[pos + 2:pos + head], "big")


def _broken(what: str) -> FeedError:
    return FeedError(f"feed broke the WebSocket protocol: {what}")


def _message(opcode: int, data: bytes) -> Frame:
    return data if opcode == BINARY else _text(data)


def _text(data: bytes) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        # RFC 6455 §8.1: a text frame that is not UTF-8 fails the connection.
        raise FeedError("feed sent a text frame that is not UTF-8") from exc


def _close_reason(data: bytes) -> str:
    if len(data) < 2:
        return "no status"
    (code,) = struct.unpack("!H", data[:2])
    text = data[2:].decode(errors="replace")
    return f"{code} {text}".strip()
