"""Schemathesis against our OpenAPI spec: no 5xx anywhere, no unauthenticated access."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err

# Reachable without credentials on purpose: the landing page, liveness, the spec, login.
PUBLIC = {("GET", "/"), ("GET", "/api/health"), ("POST", "/api/login"), ("POST", "/api/logout")}


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory, pg_base_url: str | None) -> Iterator[Any]:
    from ciams.access import Accounts
    from tests.conftest import running_server
    from tests.corpus import make_instance, to_bytes

    with running_server(tmp_path_factory.mktemp("fuzz") / "data", pg_base_url) as server:
        accounts = Accounts(server.archive.sessions)
        accounts.add_user("fuzz-admin", "admin")
        token = accounts.issue_token("fuzz-admin")
        server.auth = {"Authorization": f"Bearer {token}"}
        server.archive.ingest(to_bytes(make_instance(rows=8, columns=8)))
        yield server


def _operations(server: Any) -> list[Any]:
    schema = schemathesis.openapi.from_url(server.http_url + "/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()  # our schema must load whole
        operations.append(result.ok())
    return operations


def _fuzz(operation: Any, examples: int, check: Any) -> None:
    """Run ``check(case)`` on generated cases of one operation."""

    @given(case=operation.as_strategy())
    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: Any) -> None:
        check(case)

    run()


def test_no_server_errors_when_authenticated(api_server: Any) -> None:
    operations = _operations(api_server)
    assert len(operations) >= 20  # every DICOMweb route is in the spec

    seen: set[tuple[str, str]] = set()

    def check(case: Any) -> None:
        seen.add((case.method.upper(), case.operation.path))
        response = case.call(headers=api_server.auth, timeout=30)
        case.validate_response(response, checks=[not_a_server_error])

    for operation in operations:
        _fuzz(operation, 6, check)
    assert len(seen) == len(operations)


def test_no_unauthenticated_access(api_server: Any) -> None:
    refused: set[tuple[str, str]] = set()

    def check(case: Any) -> None:
        response = case.call(timeout=30)
        case.validate_response(response, checks=[not_a_server_error])
        if (case.method.upper(), case.operation.path) not in PUBLIC:
            assert response.status_code == 401, (case.method, case.path, response.status_code)
            refused.add((case.method.upper(), case.operation.path))

    operations = _operations(api_server)
    for operation in operations:
        _fuzz(operation, 3, check)
    public = [op for op in operations if (op.method.upper(), op.path) in PUBLIC]
    assert len(refused) == len(operations) - len(public)
