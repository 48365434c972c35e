"""The page itself (static/index.html, with the names it shows filled in) and who is looking at it."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from tentman.names import (
    DEFAULT_PRORATION_METHOD,
    INVOICE_TYPE_OF_RUN,
    RENT_DAG_ID,
    UTILITY_DAG_ID,
    InvoiceStatus,
    ProrationMethod,
    RunStatus,
    RunType,
)
from tentman.ui.deps import CSRF_HEADER, CSRF_HEADER_VALUE, can_edit_billing_settings, current_user
from tentman.ui.models import RECONCILIATION_IDS

STATIC = Path(__file__).with_name("static")
# Third-party files (charts, Swagger UI) shipped with the package: see static/vendor/README.md.
VENDOR = STATIC / "vendor"
VENDOR_URL = "/tentman/static/vendor"

router = APIRouter(include_in_schema=False)


@router.get("/ui/", response_class=HTMLResponse)
async def page(request: Request):
    """The page (no data in it): a visitor without a session is sent to Airflow's login."""
    # Imported on a request, like Airflow's other modules (tentman.ui.deps says why).
    from airflow.api_fastapi.app import get_auth_manager

    if not request.cookies.get("_token") and not request.headers.get("authorization"):
        return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)))
    await current_user(request)  # an invalid or expired session is refused like the API
    return HTMLResponse(_page_html())


@router.get("/ui/whoami")
def whoami(user=Depends(current_user)) -> dict:
    # The page shows the billing settings form only to those who may use it.
    return {"user": user.get_name(), "can_edit_billing_settings": can_edit_billing_settings(user)}


@functools.cache
def _page_html() -> str:
    """The page, with the names it shows (DAG ids, run types, statuses, proration methods, what
    each reconciliation check's ids are) from tentman.names and tentman.ui.models, and the header its
    requests that change something send (tentman.ui.deps)."""
    names = {
        "rent_dag_id": RENT_DAG_ID,
        "utility_dag_id": UTILITY_DAG_ID,
        "rent_run": RunType.MONTHLY_RENT.value,
        "utility_run": RunType.UTILITY.value,
        "rent_invoice": INVOICE_TYPE_OF_RUN[RunType.MONTHLY_RENT].value,
        "utility_invoice": INVOICE_TYPE_OF_RUN[RunType.UTILITY].value,
        "run_statuses": [status.value for status in RunStatus],
        "failed_run": RunStatus.FAILED.value,
        "draft_invoice": InvoiceStatus.DRAFT.value,
        "proration_methods": [method.value for method in ProrationMethod],
        "default_proration_method": DEFAULT_PRORATION_METHOD.value,
        "reconciliation_ids": RECONCILIATION_IDS,
        "change_headers": {"Content-Type": "application/json", CSRF_HEADER: CSRF_HEADER_VALUE},
    }
    return (STATIC / "index.html").read_text().replace("__TENTMAN_NAMES__", json.dumps(names))
