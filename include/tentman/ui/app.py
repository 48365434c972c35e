"""The "Billing runs" FastAPI app, mounted by the Airflow plugin under /tentman: its routers, the API
docs, and the vendored files they load.

Every endpoint requires an authenticated Airflow user (bearer token or the UI's session cookie)
with the right permission, checked by Airflow's own auth manager (tentman.ui.deps): reading runs
needs read access to DAG runs; the preview needs the right to trigger the rent DAG; changing an
organization's billing settings needs the right to change Airflow Variables. Reads run in READ
ONLY transactions with a statement timeout, the preview rolls back; the billing settings are the
one thing written.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from tentman.ui import organization_settings, page, preview, runs, schedule
from tentman.ui.deps import requires_reading_runs
from tentman.ui.page import VENDOR, VENDOR_URL


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
    )
    for module in (runs, preview, page, organization_settings, schedule):
        app.include_router(module.router)

    @app.get("/openapi.json", include_in_schema=False, dependencies=[requires_reading_runs])
    def openapi() -> dict:
        return app.openapi()

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
