"""The JSON API under /api/v1 (SPEC §6), described by docs/openapi.yaml.

Views only translate: they check the token, parse and check the body once,
call the running system through `GuardApi` with typed arguments, and return
its answer. What needs the store or a price (a 404, a level on the wrong side
of the market) is judged by the Guard.

An emergency close can take tens of seconds against a broker that times out,
and it holds a waitress thread all that time. At most `close_slots` closes run
at once; one more is refused with a 503 at once rather than queued, so the
remaining threads keep answering /healthz, /metrics and the status page
(finding C5).
"""

from __future__ import annotations

import json
import threading
from importlib import resources
from typing import Any

import yaml
from flask import Blueprint, Response, jsonify, request

from tradeguard.guard import KEEP, Keep, LevelChange
from tradeguard.positions import (
    Position,
    Reason,
    close_from_request,
    position_from_request,
    trailing_pct,
    validate_symbol,
)
from tradeguard.prices import valid_price
from tradeguard.web.auth import Gate
from tradeguard.web.errors import ApiError
from tradeguard.web.ports import GuardApi

FAULT_KINDS = ("crash", "hang")


def load_openapi() -> dict[str, Any]:
    """The packaged copy of docs/openapi.yaml, as a dict."""
    text = resources.files("tradeguard.web").joinpath("openapi.yaml").read_text("utf-8")
    # libyaml's loader when PyYAML was built with it: ten times faster, same result.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    spec: dict[str, Any] = yaml.load(text, Loader=loader)  # noqa: S506 (a safe loader)
    return spec


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def json_body() -> dict[str, Any]:
    """The request body as a JSON object, or a 400 saying what is wrong with it."""
    if not request.is_json:
        raise ApiError("body: must be JSON, sent with Content-Type: application/json")
    try:
        # Flask's own parser accepts NaN and Infinity; a price never is one.
        body = json.loads(request.get_data(cache=False), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise ApiError(f"body: not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError("body: must be a JSON object")
    return body


def only_fields(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise ApiError(f"unknown field(s): {', '.join(unknown)}")


def close_request(body: dict[str, Any]) -> tuple[str, Reason]:
    """A checked emergency-close body, so the system is only asked sensible things."""
    only_fields(body, ("symbol", "reason"))
    return close_from_request(body)


def open_request(body: dict[str, Any]) -> Position:
    """A checked open-position body; the Guard stamps the times when it opens it."""
    return position_from_request(body, 0.0)


def _level(body: dict[str, Any], key: str) -> float | Keep | None:
    if key not in body:
        return KEEP
    value = body[key]
    if value is None:
        return None
    if not valid_price(value):
        raise ApiError(f"{key}: must be a number above 0 or null")
    return float(value)


def _trailing(body: dict[str, Any]) -> float | Keep | None:
    if "trailing_stop_pct" not in body:
        return KEEP
    return trailing_pct(body["trailing_stop_pct"])  # a PositionError is a 400


def levels_request(body: dict[str, Any]) -> LevelChange:
    """A checked PATCH body: which levels move, and to what (null ends a trailing stop)."""
    if not body:
        raise ApiError("body: must be a JSON object with stop_loss, take_profit and/or"
                       " trailing_stop_pct")
    only_fields(body, ("stop_loss", "take_profit", "trailing_stop_pct"))
    return LevelChange(_level(body, "stop_loss"), _level(body, "take_profit"),
                       _trailing(body))


def fault_request(body: dict[str, Any]) -> tuple[str, str]:
    only_fields(body, ("actor", "kind"))
    actor, kind = body.get("actor"), body.get("kind")
    if not isinstance(actor, str) or not actor:
        raise ApiError("actor: must be the name of an actor, such as CacheActor")
    if kind not in FAULT_KINDS:
        raise ApiError(f"kind: must be one of {', '.join(FAULT_KINDS)}")
    return actor, kind


class CloseSlots:
    """At most `slots` emergency closes at once; one more is a 503 at once, not a wait."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._semaphore = threading.BoundedSemaphore(slots)

    def close(self, api: GuardApi, symbol: str, reason: Reason) -> dict[str, Any]:
        if not self._semaphore.acquire(blocking=False):
            raise ApiError(f"{self.slots} emergency closes are already under way; "
                           "retry in a moment", 503, {"Retry-After": "1"})
        try:
            return api.emergency_close(symbol, reason)
        finally:
            self._semaphore.release()


def api_blueprint(
    api: GuardApi, openapi: dict[str, Any], gate: Gate, close_slots: int
) -> Blueprint:
    bp = Blueprint("api", __name__, url_prefix="/api/v1")
    closes = CloseSlots(close_slots)

    @bp.before_request
    def authenticate() -> None:
        gate.require_token(api.api_token, protect_reads=api.protect_reads)

    @bp.get("/monitoring/connection-health")
    def connection_health() -> Response:
        return jsonify(api.connection_health())

    @bp.post("/monitoring/emergency-close-position")
    def emergency_close() -> Response:
        return jsonify(closes.close(api, *close_request(json_body())))

    @bp.get("/positions")
    def list_positions() -> Response:
        return jsonify(positions=api.list_positions())

    @bp.post("/positions")
    def open_position() -> tuple[Response, int]:
        return jsonify(api.open_position(open_request(json_body()))), 201

    @bp.patch("/positions/<symbol>")
    def patch_position(symbol: str) -> Response:
        symbol = validate_symbol(symbol)
        return jsonify(api.patch_position(symbol, levels_request(json_body())))

    @bp.post("/positions/<symbol>/release")
    def release_position(symbol: str) -> Response:
        return jsonify(api.release_position(validate_symbol(symbol)))

    @bp.get("/status")
    def status() -> Response:
        return jsonify(api.status_view())

    @bp.post("/debug/fault")
    def fault() -> tuple[Response, int]:
        if not api.fault_injection:
            raise ApiError("fault injection is disabled (debug.fault_injection)", 404)
        actor, kind = fault_request(json_body())
        try:
            api.inject_fault(actor, kind)
        except ValueError as exc:
            raise ApiError(str(exc)) from exc
        return jsonify(status="accepted", actor=actor, kind=kind), 202

    @bp.get("/openapi.json")
    def openapi_json() -> Response:
        return jsonify(openapi)

    return bp
