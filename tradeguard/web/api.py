"""The JSON API under /api/v1 (SPEC §6), described by docs/openapi.yaml.

Views only translate: they check the token, parse and shape the body, call
the running system through `GuardApi`, and return its answer. Validation of
positions lives in `tradeguard.positions`, where the system uses it too.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import yaml
from flask import Blueprint, Response, jsonify, request

from tradeguard.positions import close_from_request
from tradeguard.web.auth import require_token
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


def close_request(body: dict[str, Any]) -> dict[str, Any]:
    """A checked emergency-close body, so the system is only asked sensible things."""
    only_fields(body, ("symbol", "reason"))
    symbol, reason = close_from_request(body)
    return {"symbol": symbol, "reason": reason}


def fault_request(body: dict[str, Any]) -> tuple[str, str]:
    only_fields(body, ("actor", "kind"))
    actor, kind = body.get("actor"), body.get("kind")
    if not isinstance(actor, str) or not actor:
        raise ApiError("actor: must be the name of an actor, such as CacheActor")
    if kind not in FAULT_KINDS:
        raise ApiError(f"kind: must be one of {', '.join(FAULT_KINDS)}")
    return actor, kind


def api_blueprint(api: GuardApi, openapi: dict[str, Any]) -> Blueprint:
    bp = Blueprint("api", __name__, url_prefix="/api/v1")

    @bp.before_request
    def authenticate() -> None:
        require_token(api.api_token, protect_reads=api.protect_reads)

    @bp.get("/monitoring/connection-health")
    def connection_health() -> Response:
        return jsonify(api.connection_health())

    @bp.post("/monitoring/emergency-close-position")
    def emergency_close() -> Response:
        return jsonify(api.emergency_close(close_request(json_body())))

    @bp.get("/positions")
    def list_positions() -> Response:
        return jsonify(positions=api.list_positions())

    @bp.post("/positions")
    def open_position() -> tuple[Response, int]:
        return jsonify(api.open_position(json_body())), 201

    @bp.patch("/positions/<symbol>")
    def patch_position(symbol: str) -> Response:
        return jsonify(api.patch_position(symbol, json_body()))

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
