"""Kite's REST calls over TradeGuard's kept-alive HTTPS client: headers, forms, errors, pace.

Every call carries `X-Kite-Version: 3` and `Authorization: token
<api_key>:<access_token>` (the token asked of the TokenSource each time, so a
new one is used at once); POST and PUT bodies are form-encoded (SPEC §10,
brokers.md §2.1, checked against kiteconnect 5.2.2 `connect.py` `_request`).

What an answer means (brokers.md §2.5):
- `TokenException` (or a bare 403): `TokenRejected`, a BrokerRefused; the
  token source hears of it, and the first refusal of a token is one critical
  alert (`on_alert`), never one per call.
- `InputException`, `OrderException` and the other 4xx: BrokerRefused.
- 429: BrokerUnavailable, and the limiter pauses a second before the next call.
- 5xx (Kite's `NetworkException` 502/503 as JSON, or a gateway's HTML 502),
  timeouts, resets, DNS: BrokerUnavailable.
Kite allows 10 orders a second and 10 other requests a second (brokers.md
§2.6); one `Limiter` for each keeps to that, so a mass stop-out does not
earn a 429 and polling fills does not eat the orders' budget; orders waiting
for a slot go worst first (furthest past the stop).
"""

from __future__ import annotations

import heapq
import http.client
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode, urlsplit

from tradeguard.alerts import Alert
from tradeguard.brokers.kite.auth import TokenSource, token_accepted, token_rejected
from tradeguard.errors import BrokerError, BrokerRefused, BrokerUnavailable, ResolverError
from tradeguard.net.http import MAX_BODY, HttpClient, Response

logger = logging.getLogger(__name__)

KITE_VERSION = "3"
RATE = 10.0  # requests a second (kite docs, "API rate limit")
SLOW_DOWN = 1.0  # seconds of quiet after a 429
FORM = "application/x-www-form-urlencoded"
RETRYABLE_4XX = (408, 425, 429)

Query = Sequence[tuple[str, str]]


class TokenRejected(BrokerRefused):
    """Kite refused the access token (403 TokenException): nothing was done with this call."""


class Limiter:
    """At most `rate` calls in any one second, worst first; safe from many threads.

    Kite counts requests a second (brokers.md §2.6), so up to `rate` calls go
    at once and the next waits until the oldest of them is a second old: the
    holding read, the order and its fill of one close never wait on each other.
    Callers that must wait are served by `priority`, highest first, so in a
    mass stop-out the order for the position furthest past its stop goes first.
    `pause(seconds)` holds every caller back (after a 429). `clock` and `sleep`
    are injectable so a test can step time.
    """

    def __init__(self, rate: float = RATE, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] = time.sleep) -> None:
        self._window: deque[float] = deque(maxlen=max(1, int(rate)))
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._turn = threading.Condition()
        self._waiting: list[tuple[float, int]] = []  # heap of (-priority, arrival)
        self._serving = False
        self._arrivals = itertools.count()
        self._paused_until = -float("inf")

    def wait(self, priority: float = 0.0) -> float:
        """Take the next slot, sleeping until it comes; returns the time slept."""
        me = (-priority, next(self._arrivals))
        with self._turn:
            heapq.heappush(self._waiting, me)
            self._turn.wait_for(lambda: not self._serving and self._waiting[0] == me)
            heapq.heappop(self._waiting)
            self._serving = True  # one caller at a time takes (and sleeps for) its slot
        try:
            return self._take()
        finally:
            with self._turn:
                self._serving = False
                self._turn.notify_all()

    def queued(self) -> int:
        """How many callers wait behind the one taking its slot (tests, diagnostics)."""
        with self._turn:
            return len(self._waiting)

    def _take(self) -> float:
        with self._lock:
            now = self._clock()
            slot = max(now, self._paused_until)
            if len(self._window) == self._window.maxlen:
                slot = max(slot, self._window[0] + 1.0)
            self._window.append(slot)
        delay = slot - now
        if delay > 0:
            self._sleep(delay)
        return max(delay, 0.0)

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)


class KiteRest:
    """One Kite account's REST calls: `get`/`post` return the answer's `data` or raise."""

    def __init__(self, base_url: str, api_key: str, tokens: TokenSource, client: HttpClient, *,
                 on_alert: Callable[[Alert], None] = lambda alert: None,
                 limiter: Limiter | None = None, order_limiter: Limiter | None = None,
                 timeout: float = 5.0) -> None:
        self.base = base_url.rstrip("/")
        self.host = urlsplit(base_url).hostname or base_url
        self._api_key = api_key
        self.tokens = tokens
        self._client = client
        self._on_alert = on_alert
        self._limiter = limiter or Limiter()  # reads: 10 a second
        self._orders = order_limiter or Limiter()  # orders: 10 a second, a budget of their own
        self._timeout = timeout

    def get(self, path: str, query: Query = (), *, what: str) -> Any:
        url = self.base + path + (f"?{urlencode(query)}" if query else "")
        return self._call("GET", url, None, what)

    def post(self, path: str, form: Mapping[str, str], *, what: str, urgency: float = 0.0) -> Any:
        # Not repeated on a dropped connection by the client: a Kite order has
        # no idempotency key; the broker looks it up by tag before sending again.
        return self._call("POST", self.base + path, urlencode(form).encode(), what, urgency)

    def raw(self, url: str, *, what: str, max_body: int) -> Response:
        """A GET whose answer is not Kite JSON (the instrument CSV); status checked, body whole."""
        resp = self._send("GET", url, None, what, max_body=max_body)
        if resp.status != 200:
            raise self._status_error(resp, what)
        return resp

    def _call(self, method: str, url: str, body: bytes | None, what: str,
              urgency: float = 0.0) -> Any:
        resp = self._send(method, url, body, what, urgency=urgency)
        if resp.status == 200 and isinstance(resp.body, dict) and "data" in resp.body:
            return resp.body["data"]
        raise self._status_error(resp, what)

    def _send(self, method: str, url: str, body: bytes | None, what: str, *,
              max_body: int | None = None, urgency: float = 0.0) -> Response:
        token = self.tokens()
        if not token:
            raise TokenRejected(f"Kite {what}: not sent, there is no access token "
                                "(broker.token, broker.token_file or POST /api/v1/broker/token)")
        if self.tokens.hold_off():
            raise TokenRejected(f"Kite {what}: not sent, the access token was refused and no "
                                "new one has arrived")
        (self._orders if method == "POST" else self._limiter).wait(urgency)
        headers = self._headers(token, body)
        logger.debug("Kite %s %s%s for %s", method, self.host, urlsplit(url).path, what)
        try:
            resp = self._client.request_json(method, url, body=body, headers=headers,
                                             idempotent=method == "GET",
                                             max_body=max_body or MAX_BODY)
        except ResolverError as exc:
            raise self._fail(what, f"cannot resolve {self.host}: {exc}") from exc
        except TimeoutError as exc:
            raise self._fail(what, f"no answer within {self._timeout:g}s") from exc
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise self._fail(what, f"{type(exc).__name__}: {exc}") from exc
        self._heard(resp, token, what)
        return resp

    def _headers(self, token: str, body: bytes | None) -> dict[str, str]:
        headers = {"X-Kite-Version": KITE_VERSION,
                   "Authorization": f"token {self._api_key}:{token}"}
        if body is not None:
            headers["Content-Type"] = FORM
        return headers

    def _heard(self, resp: Response, token: str, what: str) -> None:
        """Tell the token source what Kite made of the token; alert on a change of mind."""
        if _is_token_refusal(resp):
            self.tokens.refused_at_rest(token)
            if self.tokens.rejected(token):
                self._on_alert(token_rejected(f"REST {what}", self.tokens.scrub(_message(resp))))
        elif resp.status < 400 and self.tokens.accepted(token):
            self._on_alert(token_accepted(f"REST {what}"))

    def _status_error(self, resp: Response, what: str) -> BrokerError:
        detail = f"HTTP {resp.status} {_error_type(resp)}: {_message(resp)}".replace("  ", " ")
        if _is_token_refusal(resp):
            return self._fail(what, detail, kind=TokenRejected)
        if resp.status == 429:
            self._limiter.pause(SLOW_DOWN)  # both: Kite may count the app as a whole
            self._orders.pause(SLOW_DOWN)
            return self._fail(what, f"{detail} (slowing down)")
        if resp.status >= 500 or resp.status in RETRYABLE_4XX or resp.status < 400:
            return self._fail(what, detail)  # nothing final: 5xx, HTML 502, a 200 without data
        return self._fail(what, detail, kind=BrokerRefused)

    def _fail(self, what: str, detail: str,
              kind: type[BrokerError] = BrokerUnavailable) -> BrokerError:
        message = self.tokens.scrub(f"Kite {self.host}: {what} failed: {detail}")
        if self._api_key:
            message = message.replace(f"{self._api_key}:", "[api_key]:")
        logger.warning("%s", message)
        return kind(message)


def _is_token_refusal(resp: Response) -> bool:
    """Kite's TokenException, or a 403 that names no other cause (a gateway's page).

    A 403 with another error_type (a PermissionException, say) is a refusal of
    that call, not of the token: it must not hold every later call back.
    """
    kind = _error_type(resp)
    return kind == "TokenException" or (resp.status == 403 and kind in ("", "(not JSON)"))


def _error_type(resp: Response) -> str:
    body = resp.body
    kind = body.get("error_type") if isinstance(body, dict) else None
    return kind if isinstance(kind, str) else ("" if isinstance(body, dict) else "(not JSON)")


def _message(resp: Response, limit: int = 160) -> str:
    body = resp.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])[:limit]
    text = " ".join(resp.text.split())
    return text[:limit] or "(empty body)"
