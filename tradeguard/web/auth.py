"""Bearer-token auth for the API: `Authorization: Bearer <api.token>`.

The token is compared in constant time, on bytes, and never echoed: the 401
says only that the token is missing or wrong, and nothing here logs it.
"""

from __future__ import annotations

import hmac

from flask import request

from tradeguard.web.errors import ApiError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CHALLENGE = {"WWW-Authenticate": "Bearer"}


def presented_token() -> str | None:
    """The token of an `Authorization: Bearer ...` header, or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def token_matches(presented: str | None, expected: str) -> bool:
    if presented is None or not expected:
        return False
    # Bytes, not str: compare_digest on str refuses non-ASCII, which a client controls.
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


def require_token(expected: str, *, protect_reads: bool) -> None:
    """Raise a 401 ApiError unless this request may go on.

    Writes always need the token; reads only when the API is reachable from
    other machines (`protect_reads`).
    """
    if request.method in SAFE_METHODS and not protect_reads:
        return
    if not token_matches(presented_token(), expected):
        raise ApiError("missing or invalid bearer token", 401, CHALLENGE)
