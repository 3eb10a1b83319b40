"""docs/openapi.yaml against the running service, by Schemathesis.

For every documented operation Schemathesis generates requests from the
document, valid and invalid (bounded: 30 examples an operation, no Hypothesis
deadline, and a wall-clock budget for the file), and sends them with the
Bearer token to the live waitress server of a running system. Every answer
must be documented for its operation, with the documented content type,
headers and schema; and no answer may be a 5xx other than the documented 502
(the broker failed) and 503 (/healthz with an actor down).

Fault injection is off, so the fault endpoint answers its documented 404
rather than crashing actors; tests/test_api_live.py drives faults on purpose.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.harness import API_TOKEN, Harness, running
from tradeguard.web.api import load_openapi

DOCUMENTED_SERVER_ERRORS = {502, 503}
MAX_EXAMPLES = 30
BUDGET_SECONDS = 60.0  # for the whole file; each operation gets what is left
REQUEST_TIMEOUT = 10.0

schema = schemathesis.openapi.from_dict(load_openapi())
CHECKS = [status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def deadline() -> float:
    """When the file's time budget runs out, counted from its first test."""
    return time.monotonic() + BUDGET_SECONDS


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Harness]:
    # One close attempt, no retries: a close of a position that never had a
    # price (most generated ones) fails at once instead of sleeping through
    # backoffs inside the request.
    with running(tmp_path, debug={"fault_injection": False},
                 monitor={"max_close_retries": 0}) as h:
        h.open_long("BOSCHLTD", 575.0, 560.0, 600.0)  # the document's example symbol
        yield h


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_every_answer_conforms_to_the_document(case: Case[Any], live: Harness,
                                               deadline: float) -> None:
    if time.monotonic() > deadline:
        pytest.skip(f"the file's {BUDGET_SECONDS:.0f}s budget is spent")
    response = case.call(base_url=live.url, headers={"Authorization": f"Bearer {API_TOKEN}"},
                         timeout=REQUEST_TIMEOUT)
    documented = set(case.operation.definition.raw["responses"])
    assert response.status_code < 500 or (
        response.status_code in DOCUMENTED_SERVER_ERRORS
        and str(response.status_code) in documented), (
        f"{case.method} {case.formatted_path} answered {response.status_code}: "
        f"{response.text[:300]}")
    case.validate_response(response, checks=CHECKS)
