"""The unauthenticated edges: the status page, /healthz and /metrics.

The page is rendered on the server from `status_view()` so it reads without
JavaScript; static/status.js then refreshes it from /api/v1/status every
second. When reads need the token (`protect_reads`) the page is sent empty
and the script asks for the token, so the page never shows what the API
would refuse to.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, render_template
from prometheus_client import CONTENT_TYPE_LATEST

from tradeguard import positions
from tradeguard.alerts import duration, money
from tradeguard.web.ports import GuardApi

PAGE_POLICY = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
LIVE_STATES = sorted(positions.LIVE_STATES)
PAPER = "Paper broker: closes are simulated, no order reaches a real broker"  # as status.js
NEAR_LEVEL_PCT = 1.0  # a level closer than this to the price is highlighted


def summary(view: dict[str, Any]) -> list[tuple[str, str]]:
    """What is wrong, worst first, as (level, text); one "ok" line when nothing is.

    static/status.js has the same rules (summary()); keep the two in step.
    """
    bad: list[tuple[str, str]] = []
    if not view["feed"]["connected"]:
        bad.append(("bad", "Feed disconnected"))
    live = [p for p in view["positions"] if p["state"] in LIVE_STATES]
    for state, level, text in (("close_failed", "bad", "Close failed"),
                               ("closing", "warn", "Closing")):
        symbols = [p["symbol"] for p in live if p["state"] == state]
        if symbols:
            bad.append((level, f"{text}: {', '.join(symbols)}"))
    for freshness, level, text in (("blind", "bad", "BLIND (no usable price)"),
                                   ("stale", "warn", "Stale price")):
        symbols = [p["symbol"] for p in live if p["freshness"] == freshness]
        if symbols:
            bad.append((level, f"{text}: {', '.join(symbols)}"))
    down = [name for name, actor in view["actors"].items() if not actor["alive"]]
    if down:
        bad.append(("bad", f"Actor down: {', '.join(down)}"))
    if not view["dns"]["system_ok"]:
        bad.append(("warn", "System DNS failing"))
    if view.get("broker", {}).get("paper"):
        bad.append(("warn", PAPER))
    bad.sort(key=lambda item: item[0] != "bad")
    return (bad or [("ok", "All systems normal")]) + market_closed(live)


def market_closed(live: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The "market closed" marker: held positions whose exchange is out of session."""
    waiting = [p["symbol"] for p in live if p.get("market_open") is False]
    if not waiting:
        return []
    return [("closed", f"Market closed: {', '.join(waiting)} wait for the open (no orders, "
                       "no stale or blind alerts until then)")]


def age(seconds: float | None) -> str:
    return "never" if seconds is None else duration(seconds)


def price(value: float | None, currency: str) -> str:
    return "—" if value is None else money(value, currency)


def signed_money(value: float | None, currency: str) -> str:
    return "—" if value is None else money(value, currency, signed=True)


def pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}%"


def near(value: float | None) -> bool:
    return value is not None and abs(value) < NEAR_LEVEL_PCT


def quantity(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def pages_blueprint(api: GuardApi) -> Blueprint:
    bp = Blueprint("pages", __name__)
    for name, func in (("age", age), ("price", price), ("signed_money", signed_money),
                       ("pct", pct), ("quantity", quantity)):
        bp.add_app_template_filter(func, name)
    bp.add_app_template_test(near, "near")

    @bp.get("/")
    def status_page() -> Response:
        view = None if api.protect_reads else api.status_view()
        html = render_template(
            "status.html", view=view, summary=summary(view) if view else [],
            live_states=LIVE_STATES,
        )
        return Response(html, mimetype="text/html",
                        headers={"Content-Security-Policy": PAGE_POLICY})

    @bp.get("/healthz")
    def healthz() -> tuple[Response, int]:
        ok, down = api.health()
        if ok:
            return jsonify(status="ok"), 200
        return jsonify(status="degraded", down=down), 503

    @bp.get("/metrics")
    def metrics() -> Response:
        return Response(api.metrics_exposition(), content_type=CONTENT_TYPE_LATEST)

    return bp
