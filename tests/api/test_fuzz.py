"""Every route of the live server, fed requests generated from its OpenAPI document
(schemathesis), answers without a server error, with and without a valid key."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

pytestmark = [pytest.mark.api, pytest.mark.slow]


def test_no_route_answers_5xx(served: Any) -> None:
    schema = schemathesis.openapi.from_url(f"{served['server'].url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7
    for operation in operations:
        collector = "collect" in operation.path
        _fuzz(operation, served["keys"]["source:app" if collector else "mobile_app"])


def _fuzz(operation: Any, key: str) -> None:
    """Up to 40 generated requests for one operation, each sent with the key and without."""

    @given(case=operation.as_strategy())
    @settings(
        max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def fuzz(case: Any) -> None:
        for headers in ({"X-API-Key": key}, {}):
            case.call_and_validate(headers=headers, checks=[not_a_server_error])

    fuzz()
