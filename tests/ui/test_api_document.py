"""The API's OpenAPI document (what the fuzzing in tests/ui/test_billing_ui.py holds the live API to) says what
every route checks, and every route makes the checks it says. No Airflow, no database: the app is built here."""

from __future__ import annotations

import pytest
from fastapi.routing import APIRoute

from tentman.ui.app import create_app
from tentman.ui.deps import CSRF_HEADER, SAFE_METHODS, refuse_cross_site_changes
from tentman.ui.models import BIGINT_END

pytestmark = pytest.mark.unit

APP = create_app()
DOCUMENT = APP.openapi()
OPERATIONS = [
    (method, path, operation) for path, item in DOCUMENT["paths"].items() for method, operation in item.items()
]


def test_every_route_refuses_cross_site_changes_first():
    routes = [route for route in APP.routes if isinstance(route, APIRoute)]
    assert routes
    for route in routes:
        assert route.dependant.dependencies[0].call is refuse_cross_site_changes, route.path


@pytest.mark.parametrize(("method", "path", "operation"), OPERATIONS, ids=[f"{m} {p}" for m, p, _ in OPERATIONS])
def test_each_operation_documents_its_errors_and_what_it_needs(method, path, operation):
    responses = operation["responses"]
    for status in ("401", "403"):  # no or an expired token; an invalid one, a role that may not
        assert responses[status]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    if operation.get("parameters") or operation.get("requestBody"):
        invalid = responses["422"]["content"]["application/json"]["schema"]
        assert invalid == {"$ref": "#/components/schemas/InvalidRequest"}
    if "{" in path:
        assert "404" in responses, path
    csrf = [p for p in operation.get("parameters", []) if p["name"] == CSRF_HEADER]
    if method.upper() in SAFE_METHODS:
        assert csrf == [] and "requestBody" not in operation
    else:
        assert [(p["in"], p["required"], p["schema"]["enum"]) for p in csrf] == [("header", True, ["tentman-billing"])]
        body = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        assert DOCUMENT["components"]["schemas"][body]["additionalProperties"] is False  # unknown fields refused
        assert "415" in responses


def test_ids_are_bounded_by_what_a_bigint_holds_exactly():
    """FastAPI writes bounds as floats: an inclusive 2**63 - 1 would read 2**63, a value the API refuses."""
    (run_id,) = DOCUMENT["paths"]["/api/runs/{run_id}"]["get"]["parameters"]
    assert (run_id["schema"]["minimum"], run_id["schema"]["exclusiveMaximum"]) == (1, BIGINT_END)
    assert float(BIGINT_END) == BIGINT_END


def test_the_document_names_the_credentials():
    assert set(DOCUMENT["components"]["securitySchemes"]) == {"AirflowToken", "AirflowSession"}
    assert DOCUMENT["security"] == [{"AirflowToken": []}, {"AirflowSession": []}]
