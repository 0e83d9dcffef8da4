"""A property-based fuzz run against the edge's OpenAPI spec (schemathesis): no input may cause a 5xx.

Driven through schemathesis' Python API (its pytest plugin does not yet run under this pytest), one hypothesis
run per operation of the spec, against the real app with real models and a real buffer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from edge.api import Readiness, create_app  # noqa: E402
from edge.inspection import InspectionService  # noqa: E402
from runtime.access import ApiRole  # noqa: E402
from tests.support.access import bearer, token_for  # noqa: E402

pytestmark = pytest.mark.slow


def test_no_input_causes_a_server_error(service: InspectionService, tmp_path: Path) -> None:
    def readiness() -> Readiness:
        return Readiness(
            models={"m": {"version": 0}},
            database_ok=True,
            watchdog_ok=True,
            watchdog_reason=None,
            broker_connected=False,
        )

    tokens, token = token_for(tmp_path / "api-tokens.json", ApiRole.OPERATOR)
    app = create_app(service, readiness=readiness, tokens=tokens, trusted_hosts=["localhost", "testserver"])
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /v1/inspect",
        "GET /v1/review",
        "GET /v1/samples/{sample_id}/image",
        "POST /v1/samples/{sample_id}/label",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
    }
    seen: dict[str, set[int]] = {}
    for operation in operations:
        fuzz(operation, seen, bearer(token))
    assert len(seen) == len(operations), "every operation was exercised"


def fuzz(operation: Any, seen: dict[str, set[int]], auth: dict[str, str]) -> None:
    label = f"{operation.method.upper()} {operation.path}"

    @given(case=operation.as_strategy())
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case: Any) -> None:
        response = case.call(headers=auth)
        seen.setdefault(label, set()).add(response.status_code)
        assert response.status_code < 500, f"{label} -> {response.status_code}: {response.text[:500]}"

    run()
