"""docs/openapi.yaml: valid, packaged, and true to the app it describes.

Every route of the app is in the document and every operation of the
document is a route. Then a tour of the API over real parts checks each
answer against the document: its status must be one documented for that
operation, and its body must match that status's schema.
"""

from __future__ import annotations

import configparser
import fnmatch
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flask
import pytest
import yaml
from flask.testing import FlaskClient
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate
from werkzeug.test import TestResponse

import tradeguard
from tests.conftest import GUARD_TOKEN, World
from tradeguard.guard import Guard
from tradeguard.web.app import create_app

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "openapi.yaml"
PACKAGED = ROOT / "tradeguard" / "web" / "openapi.yaml"
TOKEN = GUARD_TOKEN
AUTH = {"Authorization": f"Bearer {TOKEN}"}
METHODS = {"get", "post", "patch", "put", "delete"}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOC.read_text("utf-8"))
    return loaded


def test_the_document_is_valid_openapi_3_0(spec: dict[str, Any]) -> None:
    validate(spec)
    assert spec["openapi"] == "3.0.3"
    assert spec["info"]["version"] == tradeguard.__version__


def test_the_packaged_copy_is_the_document() -> None:
    assert PACKAGED.read_bytes() == DOC.read_bytes(), (
        "tradeguard/web/openapi.yaml must be a copy of docs/openapi.yaml: "
        "cp docs/openapi.yaml tradeguard/web/openapi.yaml"
    )


def test_the_packaged_copy_is_installed_with_the_package() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    patterns = cfg["options.package_data"]["tradeguard"].replace(",", " ").split()
    assert any(fnmatch.fnmatch("web/openapi.yaml", p) for p in patterns), (
        "setup.cfg [options.package_data] tradeguard needs web/openapi.yaml"
    )


def app_operations(app: flask.Flask) -> set[tuple[str, str]]:
    operations = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":  # the page's own script and stylesheet
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method.lower() in METHODS:
                operations.add((path, method.lower()))
    return operations


def test_every_route_is_documented_and_every_operation_is_a_route(
    app: flask.Flask, spec: dict[str, Any]
) -> None:
    documented = {
        (path, method)
        for path, item in spec["paths"].items()
        for method in item
        if method in METHODS
    }
    assert app_operations(app) == documented


# Answers match the document -------------------------------------------------------------


def operation(spec: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    for template, item in spec["paths"].items():
        pattern = "^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method.lower() in item:
            found: dict[str, Any] = item[method.lower()]
            return found
    raise AssertionError(f"{method} {path} is not in the document")


def check_answer(spec: dict[str, Any], method: str, path: str, resp: TestResponse) -> None:
    responses = operation(spec, method, path)["responses"]
    status = str(resp.status_code)
    assert status in responses, f"{method} {path} answered {status}, not documented"
    documented = responses[status]
    if "$ref" in documented:
        documented = spec["components"]["responses"][documented["$ref"].rsplit("/", 1)[1]]
    (media, content), = documented["content"].items()
    assert resp.mimetype == media
    if media != "application/json":
        return
    # The schema's $refs are resolved against a root that holds the components.
    root = {"components": spec["components"], "allOf": [content["schema"]]}
    errors = [e.message for e in OAS30Validator(root).iter_errors(resp.get_json())]
    assert not errors, f"{method} {path} {status}: {errors}"
    for name in documented.get("headers", {}):
        assert name in resp.headers


LONG = {"symbol": "BOSCHLTD", "side": "long", "quantity": 2, "entry_price": 575.0,
        "stop_loss": 560.0, "take_profit": 600.0}


def tour(
    client: FlaskClient, guard: Guard, world: World
) -> Iterator[tuple[str, str, TestResponse]]:
    """Every operation, through its success and its documented failures."""

    def call(method: str, path: str, body: Any = None, auth: bool = True,
             ) -> tuple[str, str, TestResponse]:
        kwargs: dict[str, Any] = {"headers": AUTH if auth else {}}
        if body is not None:
            kwargs["json"] = body
        return method, path, client.open(path, method=method, **kwargs)

    positions = "/api/v1/positions"
    close = "/api/v1/monitoring/emergency-close-position"
    fault = "/api/v1/debug/fault"
    yield call("GET", positions)
    yield call("POST", positions, LONG)
    yield call("POST", positions, LONG)  # 409
    yield call("POST", positions, {**LONG, "side": "up"})  # 400
    yield call("POST", positions, LONG, auth=False)  # 401
    yield call("POST", positions, {"pad": "x" * 70_000})  # 413
    yield call("POST", positions, {**LONG, "symbol": "INFY", "take_profit": None})
    yield call("GET", positions)
    yield call("PATCH", f"{positions}/BOSCHLTD", {"take_profit": None})
    yield call("PATCH", f"{positions}/TCS", {"stop_loss": 1.0})  # 404
    yield call("PATCH", f"{positions}/BOSCHLTD", {"stop_loss": 600.0})  # 400
    world.tick("BOSCHLTD", 570.0, age=40.0)  # INFY never priced
    yield call("GET", "/api/v1/monitoring/connection-health")
    yield call("GET", "/api/v1/status")
    yield call("POST", close, {"symbol": "BOSCHLTD", "reason": "stop_loss"})
    yield call("POST", close, {"symbol": "BOSCHLTD"})  # 404
    yield call("POST", close, {"symbol": "INFY"})  # 502: no usable price
    yield call("POST", close, {"symbol": "INFY", "reason": "whim"})  # 400
    world.store.claim_close("INFY", "emergency")
    yield call("POST", close, {"symbol": "INFY"})  # 409
    yield call("POST", f"{positions}/INFY/release")  # 409
    yield call("POST", f"{positions}/BOSCH$LTD/release")  # 400
    yield call("POST", f"{positions}/TCS/release", auth=False)  # 401
    yield call("POST", f"{positions}/TCS/release")  # 404
    yield call("POST", positions, {**LONG, "symbol": "TCS"})
    yield call("POST", f"{positions}/TCS/release")
    busy = create_app(guard, close_slots=0).test_client()  # every close slot taken
    yield "POST", close, busy.post(close, json={"symbol": "TCS"}, headers=AUTH)  # 503
    yield call("GET", "/api/v1/status")
    yield call("GET", positions)
    yield call("POST", fault, {"actor": "CacheActor", "kind": "crash"})
    yield call("POST", fault, {"actor": "CacheActor", "kind": "melt"})  # 400
    yield call("GET", "/healthz")
    yield call("POST", fault, {"actor": "FeedActor", "kind": "hang"})
    yield call("GET", "/healthz")  # 503
    huge = {"pad": "x" * 70_000}
    for method, path in (("POST", close), ("PATCH", f"{positions}/BOSCHLTD"), ("POST", fault)):
        yield call(method, path, {}, auth=False)  # 401
        yield call(method, path, huge)  # 413
    guard.fault_injection = False
    yield call("POST", fault, {"actor": "CacheActor", "kind": "crash"})  # 404
    yield call("GET", "/metrics")
    yield call("GET", "/")
    yield call("GET", "/api/v1/openapi.json")
    guard.protect_reads = True
    for path in (positions, "/api/v1/status", "/api/v1/monitoring/connection-health",
                 "/api/v1/openapi.json"):
        yield call("GET", path, auth=False)  # 401


def test_every_answer_is_documented_with_its_schema(
    client: FlaskClient, guard: Guard, world: World, spec: dict[str, Any]
) -> None:
    seen: set[tuple[str, str, int]] = set()
    for method, path, resp in tour(client, guard, world):
        check_answer(spec, method, path, resp)
        seen.add((method, operation(spec, method, path)["operationId"], resp.status_code))
    documented = {
        (method.upper(), op["operationId"], int(status))
        for item in spec["paths"].values()
        for method, op in item.items()
        if method in METHODS
        for status in op["responses"]
    }
    # The tour reaches every documented answer, so none is documented blindly.
    assert documented - seen == set()
