"""The "Billing runs" FastAPI app, mounted by the Airflow plugin under /tentman: its routers, the API
docs, and the vendored files they load.

Every endpoint requires an authenticated Airflow user (bearer token or the UI's session cookie)
with the right permission, checked by Airflow's own auth manager (tentman.ui.deps): reading runs
needs read access to DAG runs; the preview needs the right to trigger the rent DAG; changing an
organization's billing settings needs the right to change Airflow Variables. A request that changes
something must also come from this Airflow, not from another site's page (cross-site request
forgery), and its body is read only once all that has been checked. Reads run in READ ONLY
transactions with a statement timeout, the preview rolls back; the billing settings are the one
thing written.
"""

from __future__ import annotations

import functools

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

from tentman.ui import organization_settings, page, preview, runs, schedule
from tentman.ui.deps import (
    CSRF_HEADER,
    CSRF_HEADER_VALUE,
    SAFE_METHODS,
    refuse_cross_site_changes,
    requires_reading_runs,
)
from tentman.ui.models import error_responses
from tentman.ui.page import VENDOR, VENDOR_URL

# How a request proves who makes it (tentman.ui.deps.current_user): Airflow's token, as a bearer token or as
# the session cookie the Airflow UI sets at login.
SECURITY_SCHEMES = {
    "AirflowToken": {"type": "http", "scheme": "bearer", "description": "A token from Airflow's /auth/token"},
    "AirflowSession": {"type": "apiKey", "in": "cookie", "name": "_token", "description": "The Airflow UI's login"},
}
# The header every request that changes something must carry (tentman.ui.deps.refuse_cross_site_changes).
CSRF_HEADER_PARAMETER = {
    "name": CSRF_HEADER,
    "in": "header",
    "required": True,
    "description": "Says the request comes from this Airflow's page or an API client, not from a form or link of "
    "another site (cross-site request forgery); without it the request is refused (403)",
    "schema": {"type": "string", "enum": [CSRF_HEADER_VALUE]},
}


def create_app() -> FastAPI:
    app = FastAPI(
        title="TentMan billing runs",
        version="1.0",
        description="Results, errors and trends of the TentMan billing DAGs, a preview of a rent run, each "
        "organization's billing settings and schedule, and the billing runs due in the next days.",
        # Served below behind the same login as everything else.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # Every route: a request that changes something must come from this Airflow (no cross-site forgery);
        # every route asks Airflow who the user is and what they may do.
        dependencies=[Depends(refuse_cross_site_changes)],
        responses=error_responses(401, 403),
    )
    for module in (runs, preview, page, organization_settings, schedule):
        app.include_router(module.router)

    app.openapi = functools.partial(openapi_document, app)

    @app.get("/openapi.json", include_in_schema=False, dependencies=[requires_reading_runs])
    def openapi(request: Request) -> dict:
        # The paths are relative to where Airflow mounts the app (/tentman): Swagger UI and API clients call
        # them there.
        return {**app.openapi(), "servers": [{"url": request.scope.get("root_path") or "/"}]}

    @app.get("/docs", include_in_schema=False, dependencies=[requires_reading_runs])
    def docs() -> HTMLResponse:
        # Swagger UI from the bundle, not from a CDN: the docs work in an offline deployment.
        return get_swagger_ui_html(
            openapi_url="/tentman/openapi.json",
            title="TentMan billing runs API",
            swagger_js_url=f"{VENDOR_URL}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{VENDOR_URL}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{VENDOR_URL}/swagger-ui/favicon-32x32.png",
            # No badge from validator.swagger.io: it would call out to the internet.
            swagger_ui_parameters={"validatorUrl": None},
        )

    # Public releases (no TentMan data), served without a login like Airflow's own JavaScript; the
    # page and the docs that use them, and every API call they make, stay behind Airflow's auth.
    app.mount("/static/vendor", StaticFiles(directory=VENDOR), name="vendor")

    return app


def openapi_document(app: FastAPI) -> dict:
    """The app's OpenAPI document, with what its routes check outside their signatures: the credentials
    every route needs, the header every request that changes something needs, and the JSON bodies the
    routes read after those checks (tentman.ui.deps.json_body)."""
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = document.setdefault("components", {})
        components["securitySchemes"] = SECURITY_SCHEMES
        document["security"] = [{name: []} for name in SECURITY_SCHEMES]
        for operations in document["paths"].values():
            for method, operation in operations.items():
                if method.upper() not in SAFE_METHODS:
                    operation.setdefault("parameters", []).append(CSRF_HEADER_PARAMETER)
        schemas = components.setdefault("schemas", {})
        for route in app.routes:
            if not isinstance(route, APIRoute):
                continue
            for model in (getattr(d.call, "body_model", None) for d in route.dependant.dependencies):
                if model is None:
                    continue
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
                body = {"$ref": f"#/components/schemas/{model.__name__}"}
                for method in route.methods:
                    document["paths"][route.path_format][method.lower()]["requestBody"] = {
                        "required": True,
                        "content": {"application/json": {"schema": body}},
                    }
        app.openapi_schema = document
    return app.openapi_schema
