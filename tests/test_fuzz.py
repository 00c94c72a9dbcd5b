"""Property-based requests generated from the app's own ``/openapi.json`` (schemathesis): whatever
the input, valid for the schema or not, the server never answers 5xx, and
every status it answers is one the operation declares. Bounded (``MODELYARD_FUZZ_EXAMPLES`` per operation, default
20) so that it runs in ``make test`` in a few minutes; SQLite only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from modelyard.app import create_app
from modelyard.config import Settings

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from tests.conftest import admin_key

CONFORMANCE = [response_schema_conformance, content_type_conformance]
EXAMPLES = int(os.environ.get("MODELYARD_FUZZ_EXAMPLES", "20"))


def test_no_server_errors(tmp_path: Path) -> None:
    app = create_app(Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path / 'modelyard.db'}",
                              supervisor_interval=60.0, engine_start_timeout=5.0))
    failures: list[str] = []
    undeclared: list[str] = []  # a status the operation's OpenAPI does not list
    violations: list[str] = []  # a response body its declared schema does not describe
    with TestClient(app):  # the lifespan: a migrated database, the supervisor (and the admin key)
        auth = {"Authorization": f"Bearer {admin_key(app.state.settings)}"}
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) > 30
        spec = app.openapi()
        for operation in operations:
            declared = set(spec["paths"][operation.path][operation.method.lower()]["responses"])

            strategy = operation.as_strategy() | operation.as_strategy(schemathesis.GenerationMode.NEGATIVE)

            @hypothesis.given(case=strategy)
            @hypothesis.settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                                 suppress_health_check=list(hypothesis.HealthCheck))
            def run(case: object) -> None:
                try:
                    response = case.call(headers=auth)  # type: ignore[attr-defined]
                except Exception as exc:  # noqa: BLE001 - the test client re-raises what the app raised
                    failures.append(f"{case.method} {case.formatted_path}: {type(exc).__name__}: {exc}"[:400])  # type: ignore[attr-defined]
                    return
                if response.status_code >= 500 and response.status_code != 503:
                    failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: "  # type: ignore[attr-defined]
                                    f"{response.text[:300]}")
                try:  # the body matches the schema declared for its status
                    case.validate_response(response, checks=CONFORMANCE)  # type: ignore[attr-defined]
                except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - schemathesis' FailureGroup
                    violations.append(f"{case.method} {case.formatted_path} -> {response.status_code}: "  # type: ignore[attr-defined]
                                      f"{str(exc)[:300]}")
                if str(response.status_code) not in declared:  # noqa: B023 - run() is called in this loop turn
                    undeclared.append(f"{operation.method.upper()} {operation.path} -> "  # noqa: B023
                                      f"{response.status_code} (declared {sorted(declared)}): "  # noqa: B023
                                      f"{response.text[:200]}")

            run()
    assert not failures, "\n".join(dict.fromkeys(failures))
    assert not undeclared, "\n".join(dict.fromkeys(undeclared))
    assert not violations, "\n".join(dict.fromkeys(violations))
