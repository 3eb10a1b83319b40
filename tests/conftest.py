"""Shared fixtures: every test leaves no actor running."""

from __future__ import annotations

from collections.abc import Iterator

import pykka
import pytest

from tradeguard.sim.exchange import SimExchange


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
