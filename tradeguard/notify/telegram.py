"""Sends alert texts to one Telegram chat through the Bot API's sendMessage.

The Bot API puts the bot token in the URL path, so every request carries the
secret. It never leaves this module: exception texts are scrubbed of it, a
library error that quotes the URL is not chained, and `repr` leaves it out.
Failures are translated into NotifyError: `TelegramRetryAfter` when Telegram
throttles us (its wait capped at MAX_RETRY_AFTER: a relay's nonsense must not
silence every alert until a restart), `TelegramRefused` when Telegram said no
to this message for good (400, 403, 404: an unknown chat, a bot blocked by
the user), `permanent=True` for another 4xx that a retry cannot fix (a wrong
token), plain NotifyError for what may pass (5xx, timeouts, refused
connections, answers that are not Telegram's JSON, a 429 without a sane wait).

The connection to Telegram is kept alive and reused (SPEC §4 "Network"), so a
burst of alerts costs one DNS lookup and one TLS handshake, not one each.
"""

from __future__ import annotations

import http.client
import math
from typing import Any
from urllib.parse import quote

from tradeguard.errors import NotifyError, TradeGuardError
from tradeguard.net.http import HttpClient, Resolves, Response

MAX_TEXT = 4096  # Telegram answers 400 to anything longer: truncating beats never delivering
MAX_DETAIL = 200
MAX_RETRY_AFTER = 300.0  # seconds; Telegram's own waits are seconds to a few minutes
REFUSED = frozenset({400, 403, 404})  # Bot API: bad request, bot blocked/kicked, chat not found


class TelegramRetryAfter(NotifyError):
    """Telegram throttled the bot (429) and said how many seconds to wait."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"Telegram rate limit: retry after {retry_after:g}s")
        self.retry_after = retry_after


class TelegramRefused(NotifyError):
    """Telegram refused this message for good: sending it again gets the same answer."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)


def _retry_after(body: dict[str, Any]) -> float | None:
    """Telegram's wait, capped; None when it names none or an absurd one (NaN, < 0, 1e400)."""
    parameters = body.get("parameters")
    value = parameters.get("retry_after") if isinstance(parameters, dict) else None
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except OverflowError:  # an integer with hundreds of digits
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER)


class TelegramTransport:
    """One chat on one bot; `send` returns when Telegram accepted the message."""

    def __init__(
        self,
        api_base: str,
        bot_token: str,
        chat_id: str,
        timeout: float,
        *,
        resolver: Resolves | None = None,
        ca_file: str = "",
    ) -> None:
        quoted = quote(bot_token, safe=":")
        self._api_base = api_base.rstrip("/")
        self._url = f"{self._api_base}/bot{quoted}/sendMessage"
        self._secrets = [s for s in {bot_token, quoted} if s]
        self._chat_id = chat_id
        self._client = HttpClient(resolver, timeout=timeout, ca_file=ca_file)

    def __repr__(self) -> str:
        return f"TelegramTransport(api_base={self._api_base!r}, chat_id={self._chat_id!r})"

    def close(self) -> None:
        """Close the kept-alive connection (one in use closes when its request ends)."""
        self._client.close()

    def send(self, text: str) -> None:
        body = {
            "chat_id": self._chat_id,
            "text": text[:MAX_TEXT],
            "disable_web_page_preview": True,
        }
        try:
            response = self._client.request_json("POST", self._url, body=body)
        # ValueError: http.client refuses a request line it cannot encode (a non-ASCII
        # api_base path), a UnicodeEncodeError, which must not kill the sender (C7).
        except (OSError, http.client.HTTPException, TradeGuardError, ValueError) as exc:
            detail = self._scrub(f"{type(exc).__name__}: {exc}")
            error = NotifyError(f"Telegram unreachable: {detail}")
            if self._leaks(str(exc)):
                raise error from None
            raise error from exc
        self._check(response)

    def _check(self, response: Response) -> None:
        body = response.body if isinstance(response.body, dict) else {}
        if response.status == 200 and body.get("ok") is True:
            return
        if response.status == 429 and (seconds := _retry_after(body)) is not None:
            raise TelegramRetryAfter(seconds)
        detail = str(body.get("description") or response.text or "empty answer")
        hint = " (check telegram.bot_token)" if response.status == 401 else ""
        error = f"Telegram answered {response.status}: {self._scrub(detail)}{hint}"
        if response.status in REFUSED:
            raise TelegramRefused(error)
        raise NotifyError(error, permanent=400 <= response.status < 500 and response.status != 429)

    def _leaks(self, text: str) -> bool:
        return any(secret in text for secret in self._secrets)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "<bot token>")
        text = " ".join(text.split())
        return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."
