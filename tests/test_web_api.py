"""The HTTP layer through Flask's test client, over the real Guard.

The `guard` fixture (tests/conftest.py) is `tradeguard.guard.Guard` on a real
SQLite store, price cache, Closer and paper broker, so a 409 or a 502 here is
the store or the broker saying so; only the actors are a table.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask.testing import FlaskClient
from prometheus_client import CONTENT_TYPE_LATEST
from werkzeug.test import TestResponse

from tests.conftest import GUARD_TOKEN, World
from tradeguard.guard import Guard
from tradeguard.health import ServerHealth
from tradeguard.logs import OneLineFormatter
from tradeguard.web.app import MAX_BODY_BYTES, create_app
from tradeguard.web.auth import FailureLimit
from tradeguard.web.errors import INTERNAL_ERROR, LogBudget

TOKEN = GUARD_TOKEN
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DOCS = Path(__file__).resolve().parent.parent / "docs"
LONG = {"symbol": "BOSCHLTD", "side": "long", "quantity": 2, "entry_price": 575.0,
        "stop_loss": 560.0, "take_profit": 600.0}
SHORT = {"symbol": "INFY", "side": "short", "quantity": 10, "entry_price": 1500.0,
         "stop_loss": 1550.0, "take_profit": None}

READS = [
    ("GET", "/api/v1/monitoring/connection-health"),
    ("GET", "/api/v1/positions"),
    ("GET", "/api/v1/status"),
    ("GET", "/api/v1/openapi.json"),
]
WRITES = [
    ("POST", "/api/v1/monitoring/emergency-close-position", {"symbol": "BOSCHLTD"}),
    ("POST", "/api/v1/positions", LONG),
    ("PATCH", "/api/v1/positions/BOSCHLTD", {"stop_loss": 565.0}),
    ("POST", "/api/v1/debug/fault", {"actor": "CacheActor", "kind": "crash"}),
]
OPEN_PATHS = ["/healthz", "/metrics", "/"]


def assert_error(resp: TestResponse, code: int, containing: str = "") -> str:
    """A JSON error body, exactly {"status": "error", "error": message}; returns the message."""
    assert resp.status_code == code, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert set(body) == {"status", "error"}
    assert body["status"] == "error"
    assert isinstance(body["error"], str) and body["error"]
    assert containing in body["error"]
    return str(body["error"])


def open_position(client: FlaskClient, body: dict[str, Any] = LONG) -> dict[str, Any]:
    resp = client.post("/api/v1/positions", json=body, headers=AUTH)
    assert resp.status_code == 201, resp.get_json()
    return dict(resp.get_json())


def positions(client: FlaskClient) -> dict[str, dict[str, Any]]:
    """Live positions by symbol (closed ones left out)."""
    listed = client.get("/api/v1/positions").get_json()["positions"]
    return {p["symbol"]: p for p in listed if p["state"] != "closed"}


def close(client: FlaskClient, body: Any) -> TestResponse:
    return client.post("/api/v1/monitoring/emergency-close-position", json=body, headers=AUTH)


# Positions ----------------------------------------------------------------------


def test_opened_positions_are_listed(client: FlaskClient) -> None:
    opened = open_position(client)
    assert opened["symbol"] == "BOSCHLTD" and opened["state"] == "open"
    assert opened["stop_loss"] == 560.0 and opened["take_profit"] == 600.0
    open_position(client, SHORT)
    listed = client.get("/api/v1/positions").get_json()
    assert [p["symbol"] for p in listed["positions"]] == ["BOSCHLTD", "INFY"]
    assert listed["positions"][0] == opened


def test_second_position_for_a_symbol_is_409(client: FlaskClient) -> None:
    open_position(client)
    resp = client.post("/api/v1/positions", json={**LONG, "quantity": 1}, headers=AUTH)
    assert_error(resp, 409, "already open")
    assert positions(client)["BOSCHLTD"]["quantity"] == 2


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"symbol": ""}, "symbol"),
        ({"symbol": "BOSCH LTD"}, "symbol"),
        ({"side": "sideways"}, "side"),
        ({"quantity": 0}, "quantity"),
        ({"quantity": True}, "quantity"),
        ({"entry_price": "575"}, "entry_price"),
        ({"stop_loss": 580.0}, "stop_loss"),  # above the entry of a long
        ({"take_profit": 570.0}, "take_profit"),  # below the entry of a long
        ({"stop_loss": None, "take_profit": None}, "at least one"),
        ({"leverage": 10}, "unknown field"),
    ],
)
def test_invalid_position_is_400_and_not_stored(
    client: FlaskClient, change: dict[str, Any], field: str
) -> None:
    resp = client.post("/api/v1/positions", json={**LONG, **change}, headers=AUTH)
    assert_error(resp, 400, field)
    assert positions(client) == {}


def test_patch_moves_levels(client: FlaskClient) -> None:
    open_position(client)
    resp = client.patch("/api/v1/positions/boschltd", json={"stop_loss": 565.5}, headers=AUTH)
    assert resp.status_code == 200
    assert resp.get_json()["stop_loss"] == 565.5
    assert positions(client)["BOSCHLTD"]["stop_loss"] == 565.5
    assert positions(client)["BOSCHLTD"]["take_profit"] == 600.0


def test_patch_of_unknown_symbol_is_404(client: FlaskClient) -> None:
    resp = client.patch("/api/v1/positions/TCS", json={"stop_loss": 1.0}, headers=AUTH)
    assert_error(resp, 404, "TCS")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/positions/BOSCHLTD", {}, "body"),
        ("/api/v1/positions/BOSCHLTD", {"stop_loss": 590.0}, "stop_loss"),
        ("/api/v1/positions/BOSCHLTD", {"stop_loss": -1}, "stop_loss"),
        ("/api/v1/positions/BOSCHLTD", {"size": 3}, "unknown field"),
        ("/api/v1/positions/BOSCH$LTD", {"stop_loss": 565.0}, "symbol"),
    ],
)
def test_invalid_patch_is_400_and_changes_nothing(
    client: FlaskClient, path: str, body: dict[str, Any], field: str
) -> None:
    open_position(client)
    assert_error(client.patch(path, json=body, headers=AUTH), 400, field)
    assert positions(client)["BOSCHLTD"]["stop_loss"] == 560.0


# Emergency close ---------------------------------------------------------------------


def test_emergency_close_fills_at_the_cached_price(client: FlaskClient, world: World) -> None:
    open_position(client)
    world.tick("BOSCHLTD", 570.0, age=12.0)
    resp = close(client, {"symbol": "BOSCHLTD"})
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["status"] == "success"
    assert body["reason"] == "emergency"  # the default
    assert body["exit_price"] == 570.0
    assert body["pnl"] == pytest.approx(-10.0)
    assert body["price_age_seconds"] == pytest.approx(12.0, abs=1.0)
    assert body["order_id"] and body["client_order_id"]
    listed = client.get("/api/v1/positions").get_json()["positions"]
    assert [(p["state"], p["exit_price"]) for p in listed] == [("closed", 570.0)]


def test_closing_a_closed_position_is_404(client: FlaskClient, world: World) -> None:
    open_position(client)
    world.tick("BOSCHLTD", 580.0)
    assert close(client, {"symbol": "BOSCHLTD", "reason": "take_profit"}).status_code == 200
    assert_error(close(client, {"symbol": "BOSCHLTD"}), 404, "no open position")


def test_close_while_one_is_under_way_is_409(client: FlaskClient, world: World) -> None:
    open_position(client)
    world.tick("BOSCHLTD", 570.0)
    world.store.claim_close("BOSCHLTD", "stop_loss")  # the monitor got there first
    assert_error(close(client, {"symbol": "BOSCHLTD"}), 409, "under way")
    assert world.broker.orders == []


def test_a_blind_close_fills_at_the_last_price_with_its_true_age(
    client: FlaskClient, world: World
) -> None:
    """A market close fills whatever the market does: the answer says how old the price is."""
    open_position(client)
    world.tick("BOSCHLTD", 570.0, age=400.0)  # older than cache_timeout: blind
    body = close(client, {"symbol": "BOSCHLTD"}).get_json()
    assert body["exit_price"] == 570.0
    assert body["price_age_seconds"] == pytest.approx(400.0, abs=1.0)


def test_close_without_any_price_is_502(client: FlaskClient) -> None:
    open_position(client)
    assert_error(close(client, {"symbol": "BOSCHLTD"}), 502, "no usable price")
    assert positions(client)["BOSCHLTD"]["state"] == "close_failed"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"symbol": "BOSCHLTD", "reason": "blind"}, "reason"),
        ({"symbol": "BOSCHLTD", "reason": None}, "reason"),
        ({"symbol": "BOSCH LTD"}, "symbol"),
        ({"symbol": 42}, "symbol"),
        ({}, "symbol"),
        ({"symbol": "BOSCHLTD", "price": 1.0}, "unknown field"),
    ],
)
def test_bad_close_request_is_400_before_anything_is_claimed(
    client: FlaskClient, body: dict[str, Any], field: str, world: World) -> None:
    open_position(client)
    world.tick("BOSCHLTD", 570.0)
    assert_error(close(client, body), 400, field)
    live = world.store.live_position("BOSCHLTD")
    assert live is not None and live.state.value == "open" and live.client_order_id is None


# Auth -----------------------------------------------------------------------------------

BAD_AUTH = [
    {},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": f"Bearer {TOKEN[:-1]}"},
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Bearer {TOKEN.upper()}"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": TOKEN},
    {"Authorization": "Bearer "},
    {"Authorization": "Bearer t\u00e9st"},  # not ASCII: still a plain 401
]


@pytest.mark.parametrize("headers", BAD_AUTH)
@pytest.mark.parametrize(("method", "path", "body"), WRITES)
def test_every_write_needs_the_token(
    client: FlaskClient, method: str, path: str, body: Any,
    headers: dict[str, str], world: World) -> None:
    open_position(client)
    resp = client.open(path, method=method, json=body, headers=headers)
    assert_error(resp, 401, "token")
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert world.actors.faults == []
    assert positions(client)["BOSCHLTD"]["state"] == "open"


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
def test_writes_pass_with_the_token(
    client: FlaskClient, method: str, path: str, body: Any, world: World) -> None:
    world.tick("BOSCHLTD", 570.0)
    if path != "/api/v1/positions":
        open_position(client)
    resp = client.open(path, method=method, json=body, headers=AUTH)
    assert resp.status_code in {200, 201, 202}, resp.get_json()


@pytest.mark.parametrize(("method", "path"), READS)
def test_reads_are_open_on_loopback(client: FlaskClient, method: str, path: str) -> None:
    assert client.open(path, method=method).status_code == 200


@pytest.mark.parametrize("headers", BAD_AUTH)
@pytest.mark.parametrize(("method", "path"), READS)
def test_reads_need_the_token_when_protected(
    client: FlaskClient, guard: Guard, method: str, path: str, headers: dict[str, str]
) -> None:
    guard.protect_reads = True
    resp = client.open(path, method=method, headers=headers)
    assert_error(resp, 401, "token")
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert client.open(path, method=method, headers=AUTH).status_code == 200


@pytest.mark.parametrize("path", OPEN_PATHS)
def test_health_metrics_and_page_need_no_token(
    client: FlaskClient, guard: Guard, path: str
) -> None:
    guard.protect_reads = True
    assert client.get(path).status_code == 200


def test_an_empty_api_token_is_refused(guard: Guard) -> None:
    guard.api_token = ""
    with pytest.raises(ValueError, match="api_token"):
        create_app(guard)


def test_the_token_appears_in_no_response_and_no_log(
    client: FlaskClient, guard: Guard, caplog: pytest.LogCaptureFixture, world: World) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "Bearer wrong-Kq81-s3cret"
    world.tick("BOSCHLTD", 570.0)
    responses = [client.post("/api/v1/positions", json=LONG, headers=AUTH)]
    for headers in ({}, AUTH, {"Authorization": wrong}):
        for method, path, body in WRITES:
            responses.append(client.open(path, method=method, json=body, headers=headers))
        for method, path in READS:
            responses.append(client.open(path, method=method, headers=headers))
        for path in OPEN_PATHS:
            responses.append(client.get(path, headers=headers))
        responses.append(client.get("/api/v1/nowhere", headers=headers))
    guard.protect_reads = True
    responses.append(client.get("/", headers=AUTH))
    responses.append(client.get("/api/v1/status", headers={"Authorization": wrong}))
    for resp in responses:
        assert TOKEN not in resp.get_data(as_text=True)
        assert TOKEN not in str(resp.headers)
        assert "wrong-Kq81" not in resp.get_data(as_text=True)
    assert caplog.records, "nothing was logged, so nothing was checked"
    assert TOKEN not in caplog.text
    assert "wrong-Kq81" not in caplog.text


# Bodies: every malformed one is a 400 (or 413) JSON error, never a crash -----------

BODY_ENDPOINTS = [
    ("POST", "/api/v1/positions"),
    ("PATCH", "/api/v1/positions/BOSCHLTD"),
    ("POST", "/api/v1/monitoring/emergency-close-position"),
    ("POST", "/api/v1/debug/fault"),
]
MALFORMED = [
    pytest.param(b"{", "application/json", "not valid JSON", id="truncated"),
    pytest.param(b"", "application/json", "not valid JSON", id="empty"),
    pytest.param(b'{"symbol": "X",}', "application/json", "not valid JSON", id="trailing-comma"),
    pytest.param(b'{"symbol": NaN}', "application/json", "not valid JSON", id="nan"),
    pytest.param(b"Infinity", "application/json", "not valid JSON", id="infinity"),
    pytest.param(b"\xff\xfe\x00{", "application/json", "not valid JSON", id="not-utf8"),
    pytest.param(b"[" * 30_000 + b"]" * 30_000, "application/json", "not valid JSON",
                 id="nested-past-the-stack"),
    pytest.param(b"[1, 2]", "application/json", "JSON object", id="array"),
    pytest.param(b'"BOSCHLTD"', "application/json", "JSON object", id="string"),
    pytest.param(b"null", "application/json", "JSON object", id="null"),
    pytest.param(b"42", "application/json", "JSON object", id="number"),
    pytest.param(b'{"symbol": "X"}', "text/plain", "Content-Type", id="text-plain"),
    pytest.param(b"symbol=X", "application/x-www-form-urlencoded", "Content-Type", id="form"),
    pytest.param(b'{"symbol": "X"}', None, "Content-Type", id="no-content-type"),
]


@pytest.mark.parametrize(("data", "content_type", "message"), MALFORMED)
@pytest.mark.parametrize(("method", "path"), BODY_ENDPOINTS)
def test_malformed_bodies_are_400(
    client: FlaskClient, method: str, path: str, data: bytes, content_type: str | None,
    message: str,
) -> None:
    open_position(client)
    headers = dict(AUTH, **({"Content-Type": content_type} if content_type else {}))
    assert_error(client.open(path, method=method, data=data, headers=headers), 400, message)


@pytest.mark.parametrize(("method", "path"), BODY_ENDPOINTS)
def test_a_body_over_64_kib_is_413(client: FlaskClient, method: str, path: str) -> None:
    huge = json.dumps({"symbol": "BOSCHLTD", "pad": "x" * MAX_BODY_BYTES})
    resp = client.open(path, method=method, data=huge, content_type="application/json",
                       headers=AUTH)
    assert_error(resp, 413)


def test_a_body_of_exactly_64_kib_is_read(client: FlaskClient) -> None:
    body = {"symbol": "BOSCHLTD", "pad": ""}
    body["pad"] = "x" * (MAX_BODY_BYTES - len(json.dumps(body)))
    data = json.dumps(body)
    assert len(data) == MAX_BODY_BYTES
    resp = client.post("/api/v1/monitoring/emergency-close-position", data=data,
                       content_type="application/json", headers=AUTH)
    assert_error(resp, 400, "unknown field(s): pad")


# Unknown paths and methods, and bugs ------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/api/v1/nowhere", None),
        ("GET", "/nowhere.html", None),
        ("GET", "/api/v1/positions/", None),
        ("GET", "/api/v1/positions/BOSCHLTD", "PATCH"),
        ("DELETE", "/api/v1/positions", "GET, HEAD, OPTIONS, POST"),
        ("PUT", "/api/v1/monitoring/emergency-close-position", "POST"),
        ("GET", "/api/v1/monitoring/emergency-close-position", "POST"),
        ("POST", "/healthz", "GET, HEAD, OPTIONS"),
        ("POST", "/", "GET, HEAD, OPTIONS"),
    ],
)
def test_unknown_paths_and_methods_are_json(
    client: FlaskClient, method: str, path: str, allowed: str | None
) -> None:
    resp = client.open(path, method=method, headers=AUTH)
    if allowed is None:
        assert_error(resp, 404)
        return
    assert_error(resp, 405)
    assert set(allowed.split(", ")) <= set(resp.headers["Allow"].split(", "))


def test_an_unexpected_failure_is_a_generic_500_with_the_traceback_logged(
    client: FlaskClient, caplog: pytest.LogCaptureFixture, world: World) -> None:
    world.store.close()  # every store call now fails, as with a vanished disk
    resp = client.get("/api/v1/positions")
    assert assert_error(resp, 500) == INTERNAL_ERROR
    failures = [r for r in caplog.records if r.name == "tradeguard.web" and r.exc_info]
    assert len(failures) == 1
    assert "GET /api/v1/positions" in failures[0].getMessage()
    assert "closed database" in caplog.text  # the detail is in the log, not the response


def test_the_logger_name_is_the_callers(
    guard: Guard, caplog: pytest.LogCaptureFixture, world: World) -> None:
    client = create_app(guard, logger_name="tradeguard.actors.api").test_client()
    world.store.close()
    assert client.get("/api/v1/positions").status_code == 500
    assert [r.name for r in caplog.records if r.exc_info] == ["tradeguard.actors.api"]


def test_client_errors_are_logged_within_a_budget() -> None:
    now = [0.0]
    budget = LogBudget(per_minute=3, clock=lambda: now[0])
    assert [budget.take() for _ in range(5)] == [0, 0, 0, None, None]
    now[0] = 60.0
    assert budget.take() == 2  # the next line says two were held back
    assert budget.take() == 0


# Health, metrics, faults, status, spec -----------------------------------------------------


def test_healthz_is_ok_while_every_actor_is_up(client: FlaskClient) -> None:
    resp = client.get("/healthz")
    assert (resp.status_code, resp.get_json()) == (200, {"status": "ok"})


def test_healthz_is_503_naming_the_actors_that_are_down(
    client: FlaskClient, guard: Guard
) -> None:
    guard.inject_fault("FeedActor", "hang")
    resp = client.get("/healthz")
    assert (resp.status_code, resp.get_json()) == (503, {"status": "degraded",
                                                         "down": ["FeedActor"]})


def test_metrics_are_prometheus_text(client: FlaskClient, world: World) -> None:
    open_position(client)
    world.tick("BOSCHLTD", 570.0)
    assert close(client, {"symbol": "BOSCHLTD", "reason": "stop_loss"}).status_code == 200
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
    text = resp.get_data(as_text=True)
    assert 'tradeguard_position_closes_total{reason="stop_loss",result="ok"} 1.0' in text
    assert "tradeguard_positions_open 0.0" in text


def test_fault_is_accepted_and_reaches_the_actor(client: FlaskClient, world: World) -> None:
    resp = client.post("/api/v1/debug/fault", json={"actor": "CacheActor", "kind": "crash"},
                       headers=AUTH)
    assert resp.status_code == 202
    assert resp.get_json() == {"status": "accepted", "actor": "CacheActor", "kind": "crash"}
    assert world.actors.faults == [("CacheActor", "crash")]
    actors = client.get("/api/v1/monitoring/connection-health").get_json()["actors"]
    assert actors["CacheActor"]["restarts"] == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"actor": "NoSuchActor", "kind": "crash"}, "NoSuchActor"),
        ({"actor": "CacheActor", "kind": "explode"}, "kind"),
        ({"actor": "CacheActor"}, "kind"),
        ({"kind": "hang"}, "actor"),
        ({"actor": ["CacheActor"], "kind": "hang"}, "actor"),
        ({"actor": "CacheActor", "kind": "hang", "delay": 1}, "unknown field"),
    ],
)
def test_bad_fault_is_400(
    client: FlaskClient, body: dict[str, Any], field: str, world: World) -> None:
    assert_error(client.post("/api/v1/debug/fault", json=body, headers=AUTH), 400, field)
    assert world.actors.faults == []


def test_fault_endpoint_is_404_when_disabled(
    client: FlaskClient, guard: Guard, world: World
) -> None:
    guard.fault_injection = False
    resp = client.post("/api/v1/debug/fault", json={"actor": "CacheActor", "kind": "crash"},
                       headers=AUTH)
    assert_error(resp, 404, "fault_injection")
    assert world.actors.faults == []
    # Without the token it is a 401 as for any write: its being off is not told to strangers.
    assert_error(client.post("/api/v1/debug/fault", json={}), 401)


def test_connection_health_has_the_spec_shape(client: FlaskClient, world: World) -> None:
    open_position(client)
    world.tick("BOSCHLTD", 570.0, age=45.0)
    world.dns_check(False, {"127.0.0.1:5353": ServerHealth(True, 3.5)})
    health = client.get("/api/v1/monitoring/connection-health").get_json()
    assert health["websocket"]["connected"] is True
    assert health["dns"]["system_ok"] is False
    assert health["dns"]["servers"]["127.0.0.1:5353"]["latency_ms"] == 3.5
    entry = health["price_cache"]["cache_entries"]["BOSCHLTD"]
    assert entry["price"] == 570.0 and entry["is_stale"] is True
    assert health["positions"] == {"open": 1, "blind": [], "stale": []}


def test_a15_connection_health_says_the_broker_is_paper(client: FlaskClient) -> None:
    """A15: with the default paper broker, nothing real is closed, and health says so."""
    broker = client.get("/api/v1/monitoring/connection-health").get_json()["broker"]
    assert broker["kind"] == "paper" and broker["paper"] is True
    assert "no order reaches a real broker" in broker["warning"]
    assert "Paper broker: closes are simulated" in client.get("/").get_data(as_text=True)


def test_a15_a_real_broker_carries_no_paper_warning(world: World) -> None:
    guard = world.guard(world.cfg.replace("broker", kind="http", url="https://b.example"))
    assert guard.connection_health()["broker"] == {"kind": "http", "paper": False}


def test_status_says_how_fresh_each_price_is(client: FlaskClient, world: World) -> None:
    for symbol, entry in (("AAA", 100.0), ("BBB", 200.0), ("CCC", 300.0), ("DDD", 400.0)):
        open_position(client, {**LONG, "symbol": symbol, "entry_price": entry,
                                "stop_loss": entry * 0.9, "take_profit": entry * 1.1})
    world.tick("AAA", 99.0, age=1.0)
    world.tick("BBB", 199.0, age=45.0)
    world.tick("CCC", 299.0, age=400.0)
    view = client.get("/api/v1/status").get_json()
    rows = {p["symbol"]: p for p in view["positions"]}
    assert {s: rows[s]["freshness"] for s in rows} == {
        "AAA": "fresh", "BBB": "stale", "CCC": "blind", "DDD": "blind"}
    assert rows["AAA"]["distance_to_stop_pct"] == pytest.approx(-9.091, abs=0.001)
    assert rows["DDD"]["price"] is None
    assert view["currency"] == "₹"
    assert view["thresholds"] == {"stale": 30.0, "blind": 300.0}


def test_openapi_json_is_the_yaml(client: FlaskClient) -> None:
    served = client.get("/api/v1/openapi.json").get_json()
    assert served == yaml.safe_load((DOCS / "openapi.yaml").read_text("utf-8"))


# The status page ---------------------------------------------------------------------------


def test_status_page_shows_positions_feed_dns_actors_and_alerts(
    client: FlaskClient, guard: Guard, world: World) -> None:
    open_position(client)
    open_position(client, SHORT)
    world.tick("BOSCHLTD", 570.0, age=2.0)
    world.tick("INFY", 1510.0, age=400.0)
    world.dns_check(False, {"8.8.8.8": ServerHealth(True, 12.5)})
    guard.inject_fault("FeedActor", "hang")
    resp = client.get("/")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    html = resp.get_data(as_text=True)
    assert '<tr data-symbol="BOSCHLTD" data-state="open">' in html
    assert '<td class="num price fresh">₹570.00</td>' in html
    assert '<td class="freshness blind">' in html  # INFY's price is 400 s old
    assert 'id="feed-connected" class="up">connected<' in html
    assert '<span id="dns-system" class="down">FAILING</span>' in html
    assert '<tr data-dns-server="8.8.8.8">' in html
    assert '<td class="alive down">DOWN</td>' in html
    assert "BLIND (no usable price): INFY" in html
    assert "Actor down: FeedActor" in html
    assert 'src="/static/status.js"' in html and "https://" not in html


def test_status_page_shows_closes_and_alerts(client: FlaskClient, world: World) -> None:
    open_position(client)
    world.tick("BOSCHLTD", 570.0)
    assert close(client, {"symbol": "BOSCHLTD"}).status_code == 200
    html = client.get("/").get_data(as_text=True)
    assert '<tr data-symbol="BOSCHLTD" data-state="closed"' in html
    assert '<td class="num pnl">-₹10.00</td>' in html
    assert "BOSCHLTD: position closed (emergency)" in html


def test_status_page_escapes_what_it_shows(client: FlaskClient, world: World) -> None:
    world.feed.update(last_error="<script>alert(1)</script>")
    html = client.get("/").get_data(as_text=True)
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_protected_status_page_shows_nothing_until_the_token_is_given(
    client: FlaskClient, guard: Guard
) -> None:
    open_position(client)
    guard.protect_reads = True
    html = client.get("/").get_data(as_text=True)
    assert 'id="token-form"' in html
    assert "BOSCHLTD" not in html
    assert "<main hidden>" in html


@pytest.mark.parametrize(
    ("path", "mimetype"),
    [("/static/status.js", "text/javascript"), ("/static/status.css", "text/css")],
)
def test_page_assets_are_served(client: FlaskClient, path: str, mimetype: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 200 and resp.mimetype == mimetype
    assert b"https://" not in resp.data  # no CDN, no external fonts
    resp.close()


def test_a_figure_that_overflowed_is_sent_as_null(client: FlaskClient, world: World) -> None:
    open_position(client, {**LONG, "quantity": 1e308, "entry_price": 1e308,
                           "stop_loss": 1.0, "take_profit": None})
    world.tick("BOSCHLTD", 2.0)
    resp = client.get("/api/v1/status")
    assert resp.status_code == 200
    strict = json.loads(resp.data, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert strict["positions"][0]["unrealized_pnl"] is None  # -Infinity, which JSON lacks


# Findings: levels against the price, release, log injection, Host, wrong tokens ------------


def test_a6_a_longs_stop_may_move_above_entry_while_below_the_price(
    client: FlaskClient, world: World
) -> None:
    """A6: a long bought at 575 that runs to 650 locks in profit with a stop at 620."""
    open_position(client)
    world.tick("BOSCHLTD", 650.0)
    resp = client.patch("/api/v1/positions/BOSCHLTD", json={"stop_loss": 620.0,
                                                            "take_profit": 700.0}, headers=AUTH)
    assert resp.status_code == 200, resp.get_json()
    assert positions(client)["BOSCHLTD"]["stop_loss"] == 620.0
    assert world.actors.changed[-1] == "BOSCHLTD"  # the monitor is told to reload


@pytest.mark.parametrize(
    ("body", "field"),
    [({"stop_loss": 655.0}, "stop_loss: must be below the price (650)"),
     ({"take_profit": 640.0}, "take_profit: must be above the price (650)")],
)
def test_a6_a_level_on_the_wrong_side_of_the_price_is_400(
    client: FlaskClient, world: World, body: dict[str, Any], field: str
) -> None:
    """A6: a level past the market would fire at once; that is a mistake, not a request."""
    open_position(client)
    world.tick("BOSCHLTD", 650.0)
    assert_error(client.patch("/api/v1/positions/BOSCHLTD", json=body, headers=AUTH), 400,
                 field)
    assert positions(client)["BOSCHLTD"]["stop_loss"] == 560.0


def test_a6_a_short_is_judged_against_the_price_too(client: FlaskClient, world: World) -> None:
    open_position(client, SHORT)  # short at 1500, stop 1550
    world.tick("INFY", 1400.0)
    resp = client.patch("/api/v1/positions/INFY", json={"stop_loss": 1450.0}, headers=AUTH)
    assert resp.status_code == 200, resp.get_json()


def test_a6_without_a_usable_price_levels_are_judged_against_the_entry(
    client: FlaskClient, world: World
) -> None:
    open_position(client)
    world.tick("BOSCHLTD", 650.0, age=400.0)  # not usable: nothing to judge against but entry
    assert_error(client.patch("/api/v1/positions/BOSCHLTD", json={"stop_loss": 620.0},
                              headers=AUTH), 400, "entry_price")


def test_release_stops_guarding_without_closing(client: FlaskClient, world: World) -> None:
    open_position(client)
    resp = client.post("/api/v1/positions/boschltd/release", headers=AUTH)
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["state"] == "released"
    assert world.broker.orders == []  # nothing was sent
    assert world.actors.changed[-1] == "BOSCHLTD"
    assert_error(client.post("/api/v1/positions/BOSCHLTD/release", headers=AUTH), 404)
    assert_error(client.patch("/api/v1/positions/BOSCHLTD", json={"stop_loss": 1.0},
                              headers=AUTH), 404)
    open_position(client)  # the symbol can be guarded again


def test_release_while_a_close_is_under_way_is_409(client: FlaskClient, world: World) -> None:
    open_position(client)
    world.store.claim_close("BOSCHLTD", "stop_loss")
    assert_error(client.post("/api/v1/positions/BOSCHLTD/release", headers=AUTH), 409)


def test_release_needs_the_token(client: FlaskClient) -> None:
    open_position(client)
    assert_error(client.post("/api/v1/positions/BOSCHLTD/release"), 401)
    assert positions(client)["BOSCHLTD"]["state"] == "open"


def test_d1_a_client_cannot_forge_a_log_line(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    """D1: a percent-encoded newline in the path is logged escaped, on the same line."""
    caplog.set_level(logging.INFO, logger="tradeguard.web")
    forged = "2026-01-01 CRITICAL [CLOSE] FAKE closed"
    client.patch(f"/api/v1/positions/X%0A{forged.replace(' ', '%20')}", json={})
    client.get("/nowhere%0D%0A%E2%80%A8" + forged.replace(" ", "%20"))
    lines = [r.getMessage() for r in caplog.records if r.name == "tradeguard.web"]
    assert len(lines) == 2
    for line in lines:
        assert "\n" not in line and "\r" not in line and "\u2028" not in line
        assert forged in line  # still there to read, escaped
    assert "X\\x0a2026-01-01" in lines[0]


@pytest.mark.parametrize("host", ["localhost", "localhost:8080", "127.0.0.1:8080",
                                  "[::1]:8080", "127.0.0.5", "app.localhost", "LOCALHOST."])
def test_d2_loopback_host_names_are_answered(client: FlaskClient, host: str) -> None:
    assert client.get("/api/v1/positions", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("path", ["/api/v1/positions", "/api/v1/status", "/healthz", "/"])
def test_d2_a_rebound_host_name_is_refused(client: FlaskClient, path: str) -> None:
    """D2: a page that rebinds evil.example to 127.0.0.1 sends Host: evil.example."""
    resp = client.get(path, headers={"Host": "evil.example:8080"})
    assert_error(resp, 421, "host")


def test_d2_the_configured_api_host_is_answered(world: World) -> None:
    guard = world.guard(world.cfg.replace("api", host="10.1.2.3"))
    client = create_app(guard).test_client()
    assert client.get("/healthz", headers={"Host": "10.1.2.3:8080"}).status_code == 200
    assert client.get("/healthz", headers={"Host": "evil.example"}).status_code == 421
    anywhere = create_app(world.guard(world.cfg.replace("api", host="0.0.0.0")))
    assert anywhere.test_client().get("/healthz", headers={"Host": "tg.lan"}).status_code == 200


REMOTE = {"REMOTE_ADDR": "203.0.113.9"}


def test_d6_repeated_wrong_tokens_from_one_client_are_429(
    client: FlaskClient, world: World
) -> None:
    """D6: after ten wrong tokens in a minute a remote client is told to wait, token or not."""
    open_position(client)
    wrong = {"Authorization": "Bearer not-the-token-at-all"}
    for _ in range(10):
        assert close_as(client, wrong, REMOTE).status_code == 401
    assert_error(close_as(client, wrong, REMOTE), 429, "too many")
    locked = close_as(client, AUTH, REMOTE)
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0
    assert world.broker.orders == []
    other = close_as(client, AUTH, {"REMOTE_ADDR": "203.0.113.10"})  # another client
    assert other.status_code != 429


def test_d6_loopback_clients_are_never_locked_out(client: FlaskClient) -> None:
    """A local process must not be able to lock the operator out of emergency close."""
    wrong = {"Authorization": "Bearer not-the-token-at-all"}
    for _ in range(30):
        assert close_as(client, wrong, {}).status_code == 401


def test_d6_the_lockout_ends_with_its_window() -> None:
    now = [0.0]
    limit = FailureLimit(allowed=2, window=60.0, clock=lambda: now[0])
    limit.failed("a")
    limit.failed("a")
    assert limit.blocked_for("a") == 60.0
    now[0] = 59.0
    assert limit.blocked_for("a") == 1.0
    now[0] = 60.0
    assert limit.blocked_for("a") == 0.0
    limit.failed("a")  # a new window: one failure, not three
    assert limit.blocked_for("a") == 0.0


def close_as(client: FlaskClient, headers: dict[str, str], environ: dict[str, str]) -> Any:
    return client.post("/api/v1/monitoring/emergency-close-position", json={"symbol": "BOSCHLTD"},
                       headers=headers, environ_base=environ)


def test_c5_a_close_beyond_the_slots_is_503_at_once(guard: Guard, world: World) -> None:
    """C5: with every close slot taken, another close is refused, not queued on a thread."""
    client = create_app(guard, close_slots=0).test_client()
    open_position(client)
    world.tick("BOSCHLTD", 570.0)
    resp = client.post("/api/v1/monitoring/emergency-close-position",
                       json={"symbol": "BOSCHLTD"}, headers=AUTH)
    assert_error(resp, 503, "under way")
    assert resp.headers["Retry-After"] == "1"
    assert positions(client)["BOSCHLTD"]["state"] == "open"


def test_d1_the_log_formatter_keeps_one_event_on_one_line() -> None:
    """D1: whatever a caller logs, the line it writes cannot start another."""
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "symbol %s", ("A\nB\r\u2028C",),
                               None)
    text = OneLineFormatter("%(message)s").format(record)
    assert text == "symbol A\\x0aB\\x0d\\u2028C"


def test_d6_the_failure_table_stays_bounded_under_a_flood_of_addresses() -> None:
    limit = FailureLimit(allowed=1, window=60.0, clock=lambda: 0.0)
    for n in range(10_000):
        limit.failed(f"10.0.{n // 256}.{n % 256}")
    assert len(limit._clients) <= 4096
    assert limit.blocked_for("10.0.39.15") > 0  # the newest are still remembered


# Trailing stops, products (issue 18) ---------------------------------------------------


TRAIL = {**LONG, "stop_loss": None, "take_profit": None, "trailing_stop_pct": 5}


def test_a_trailing_stop_needs_no_level_and_starts_at_the_entry(client: FlaskClient) -> None:
    opened = open_position(client, TRAIL)
    assert (opened["stop_loss"], opened["trailing_stop_pct"]) == (546.25, 5.0)  # 575 x 0.95
    assert (opened["product"], opened["source"]) == ("MIS", "api")  # broker.product's default
    assert positions(client)["BOSCHLTD"] == opened


def test_a_given_stop_nearer_the_market_than_the_trail_stands(client: FlaskClient) -> None:
    assert open_position(client, {**TRAIL, "stop_loss": 570.0})["stop_loss"] == 570.0
    short = {**SHORT, "stop_loss": 1600.0, "trailing_stop_pct": 2}  # trail 1530 is nearer
    assert open_position(client, short)["stop_loss"] == 1530.0


@pytest.mark.parametrize("product", ["MIS", "CNC", "NRML", "MTF", "I", "D"])
def test_either_brokers_product_names_are_kept(client: FlaskClient, product: str) -> None:
    assert open_position(client, {**LONG, "product": product})["product"] == product


@pytest.mark.parametrize(
    ("change", "field"),
    [({"trailing_stop_pct": 0}, "trailing_stop_pct"),
     ({"trailing_stop_pct": 100}, "trailing_stop_pct"),
     ({"trailing_stop_pct": -5}, "trailing_stop_pct"),
     ({"trailing_stop_pct": True}, "trailing_stop_pct"),
     ({"trailing_stop_pct": "5"}, "trailing_stop_pct"),
     ({"trailing_stop_pct": None, "stop_loss": None, "take_profit": None}, "at least one"),
     ({"product": "XYZ"}, "product"),
     ({"product": "cnc"}, "product"),
     ({"product": 1}, "product")],
)
def test_a_bad_trailing_stop_or_product_is_400_and_not_stored(
    client: FlaskClient, change: dict[str, Any], field: str
) -> None:
    resp = client.post("/api/v1/positions", json={**TRAIL, **change}, headers=AUTH)
    assert_error(resp, 400, field)
    assert positions(client) == {}


def test_patch_starts_a_trail_at_the_latest_price(client: FlaskClient, world: World) -> None:
    open_position(client)  # stop 560, target 600
    world.tick("BOSCHLTD", 590.0)
    resp = client.patch("/api/v1/positions/BOSCHLTD", json={"trailing_stop_pct": 5},
                        headers=AUTH)
    assert resp.status_code == 200, resp.get_json()
    assert (resp.get_json()["stop_loss"], resp.get_json()["trailing_stop_pct"]) == (560.5, 5.0)
    stored = world.store.live_position("BOSCHLTD")
    assert stored is not None and stored.best == 590.0
    assert world.actors.changed[-1] == "BOSCHLTD"


def test_patch_null_ends_the_trail_and_leaves_the_stop(client: FlaskClient) -> None:
    open_position(client, TRAIL)
    resp = client.patch("/api/v1/positions/BOSCHLTD", json={"trailing_stop_pct": None},
                        headers=AUTH)
    assert resp.status_code == 200, resp.get_json()
    assert (resp.get_json()["stop_loss"], resp.get_json()["trailing_stop_pct"]) == (546.25, None)


def test_patch_a_wider_trail_never_loosens_the_stop(client: FlaskClient) -> None:
    open_position(client, TRAIL)
    resp = client.patch("/api/v1/positions/BOSCHLTD", json={"trailing_stop_pct": 10},
                        headers=AUTH)
    assert resp.status_code == 200 and resp.get_json()["stop_loss"] == 546.25


def test_patch_a_trail_so_tight_it_passes_the_price_is_400(
    client: FlaskClient, world: World
) -> None:
    open_position(client, TRAIL)
    world.tick("BOSCHLTD", 560.0)  # below its best (575): 1% of 575 is 569.25, above 560
    assert_error(client.patch("/api/v1/positions/BOSCHLTD", json={"trailing_stop_pct": 1},
                              headers=AUTH), 400, "stop_loss: must be below the price (560)")
    assert positions(client)["BOSCHLTD"]["trailing_stop_pct"] == 5.0


@pytest.mark.parametrize("value", [0, 100, "2", False])
def test_patch_a_bad_trailing_stop_is_400(client: FlaskClient, value: Any) -> None:
    open_position(client, TRAIL)
    assert_error(client.patch("/api/v1/positions/BOSCHLTD", json={"trailing_stop_pct": value},
                              headers=AUTH), 400, "trailing_stop_pct")


def test_a6_a_longs_target_may_move_below_entry_while_above_the_price(
    client: FlaskClient, world: World
) -> None:
    """A6, targets: a long at 575 that fell to 565 may take what it can at 570."""
    open_position(client)
    world.tick("BOSCHLTD", 565.0)
    resp = client.patch("/api/v1/positions/BOSCHLTD", json={"take_profit": 570.0}, headers=AUTH)
    assert resp.status_code == 200, resp.get_json()
    assert_error(client.patch("/api/v1/positions/BOSCHLTD", json={"take_profit": 564.0},
                              headers=AUTH), 400, "take_profit: must be above the price (565)")


def test_a6_a_shorts_target_and_stop_are_judged_against_the_price(
    client: FlaskClient, world: World
) -> None:
    """A6, shorts: the mirror image, for both levels."""
    open_position(client, SHORT)  # short at 1500, stop 1550
    world.tick("INFY", 1400.0)
    assert_error(client.patch("/api/v1/positions/INFY", json={"take_profit": 1450.0},
                              headers=AUTH), 400, "take_profit: must be below the price (1400)")
    assert_error(client.patch("/api/v1/positions/INFY", json={"stop_loss": 1390.0},
                              headers=AUTH), 400, "stop_loss: must be above the price (1400)")
    resp = client.patch("/api/v1/positions/INFY", json={"stop_loss": 1450.0,
                                                        "take_profit": 1350.0}, headers=AUTH)
    assert resp.status_code == 200, resp.get_json()
    world.tick("INFY", 1600.0)  # a short in loss: its target may move above its entry
    resp = client.patch("/api/v1/positions/INFY", json={"take_profit": 1550.0,
                                                        "stop_loss": 1650.0}, headers=AUTH)
    assert resp.status_code == 200, resp.get_json()


def test_a6_a_short_without_a_usable_price_is_judged_against_its_entry(
    client: FlaskClient, world: World
) -> None:
    open_position(client, SHORT)
    world.tick("INFY", 1400.0, age=400.0)  # too old to use
    assert_error(client.patch("/api/v1/positions/INFY", json={"stop_loss": 1450.0},
                              headers=AUTH), 400, "stop_loss: must be above entry_price")
    assert_error(client.patch("/api/v1/positions/INFY", json={"take_profit": 1510.0},
                              headers=AUTH), 400, "take_profit: must be below entry_price")


def test_patch_clearing_the_stop_of_a_trail_puts_it_back_at_the_trails_level(
    client: FlaskClient
) -> None:
    open_position(client, {**TRAIL, "stop_loss": 570.0})
    resp = client.patch("/api/v1/positions/BOSCHLTD", json={"stop_loss": None}, headers=AUTH)
    assert resp.status_code == 200 and resp.get_json()["stop_loss"] == 546.25
    assert_error(client.patch("/api/v1/positions/BOSCHLTD", json={
        "stop_loss": None, "take_profit": None, "trailing_stop_pct": None}, headers=AUTH),
        400, "at least one")
    assert positions(client)["BOSCHLTD"]["trailing_stop_pct"] == 5.0
