"""Shared fixtures: every test leaves no actor running."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import flask
import pykka
import pytest
from flask.testing import FlaskClient

from tests.support.guard_impl import GUARD_TOKEN, GuardImpl
from tradeguard.sim.exchange import SimExchange
from tradeguard.web.app import create_app


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", help="run the long soak/chaos tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="long run: use --soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _stop_all_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all()


@pytest.fixture
def exchange() -> Iterator[SimExchange]:
    """A real WebSocket feed on loopback, stopped after the test."""
    with SimExchange() as sim:
        yield sim


@pytest.fixture
def guard(tmp_path: Path) -> Iterator[GuardImpl]:
    """The GuardApi the web tests serve: real store, cache, Closer and paper broker."""
    impl = GuardImpl(tmp_path / "guard.db", api_token=GUARD_TOKEN)
    yield impl
    impl.close()


@pytest.fixture
def app(guard: GuardImpl) -> flask.Flask:
    app = create_app(guard)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app: flask.Flask) -> FlaskClient:
    return app.test_client()
