"""The "Billing runs" FastAPI app, mounted by the Airflow plugin under /tentman.

Every endpoint requires an authenticated Airflow user (bearer token or the UI's session cookie)
with the right permission, checked by Airflow's own auth manager: reading runs needs read access
to DAG runs; the preview needs the right to trigger the rent DAG; changing an organization's billing
settings needs the right to change Airflow Variables (tentman.ui.organization_settings). Reads run in
READ ONLY transactions with a statement timeout, the preview rolls back; the billing settings are
the one thing written.
"""

from __future__ import annotations

import functools
import json
from datetime import date, datetime
from pathlib import Path
from typing import Literal

import pendulum
import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from tentman.billing.periods import BillingPeriod
from tentman.db import UnitOfWork
from tentman.names import (
    BILLING_MONTH_PATTERN,
    DEFAULT_PRORATION_METHOD,
    INVOICE_TYPE_OF_RUN,
    RENT_DAG_ID,
    RENT_RUN,
    RUN_STATUSES,
    UTILITY_DAG_ID,
    UTILITY_RUN,
    ProrationMethod,
    organization_label,
)
from tentman.ui import queries

STATIC = Path(__file__).with_name("static")
# Third-party files (charts, Swagger UI) shipped with the package: see static/vendor/README.md.
VENDOR = STATIC / "vendor"
VENDOR_URL = "/tentman/static/vendor"
RunType = Literal[RENT_RUN, UTILITY_RUN]
RunStatus = Literal[RUN_STATUSES]


@functools.cache
def _engine() -> sa.Engine:
    from tentman.orchestration.connection import airflow_tentman_engine

    return airflow_tentman_engine()


def read_only():
    """A connection in a READ ONLY transaction with a statement timeout (never committed)."""
    with UnitOfWork(_engine(), read_only=True, statement_timeout="15s") as uow:
        yield uow.connection


async def current_user(request: Request):
    """The Airflow user of the request: bearer token first, else the UI's session cookie."""
    from airflow.api_fastapi.core_api.security import resolve_user_from_token

    authorization = request.headers.get("authorization", "")
    token = authorization[7:] if authorization.lower().startswith("bearer ") else request.cookies.get("_token")
    return await resolve_user_from_token(token)  # 401 without credentials, 403 for a bad token


def requires_dag_run_access(method: str, dag_id: str | None = None):
    """The user must be allowed `method` on DAG runs (of `dag_id`, or of every DAG) by the auth manager."""

    def check(user=Depends(current_user)):
        from airflow.api_fastapi.app import get_auth_manager
        from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

        if not get_auth_manager().is_authorized_dag(
            method=method, access_entity=DagAccessEntity.RUN, details=DagDetails(id=dag_id), user=user
        ):
            raise HTTPException(403, "Forbidden: your Airflow role does not allow this")
        return user

    return Depends(check)


class LeaseError(BaseModel):
    lease_id: int | None = Field(description="The lease, or null for an organization-level error")
    error: str


class Run(BaseModel):
    """One organization's part of one DAG run (a row of `invoice_runs`)."""

    id: int
    dag_id: str
    dag_run_id: str
    organization_id: int
    organization_name: str | None
    run_type: RunType
    billing_period_start: date
    billing_period_end: date
    proration_method: str | None
    status: RunStatus
    total_leases: int
    success_count: int
    skipped_count: int
    failure_count: int
    errors: list[LeaseError]
    started_at: datetime
    completed_at: datetime | None
    duration_seconds: float | None
    drafted_invoices: int = Field(
        description="Invoices linked to this run by `invoices.invoice_run_id`: the drafts it created or updated "
        "(rent and utility) or found unchanged (rent), whatever their status since, unless a later run of the same "
        "organization and period has written them since; void ones excluded"
    )
    drafted_amount: str = Field(description="Total of the drafted invoices (a decimal string, two decimals)")
    other_invoices: int = Field(
        description="The organization's other invoices of this type and period, not linked to this run: issued "
        "or paid ones it left alone, drafts written by another run or by the TentMan app; void ones excluded"
    )
    other_amount: str = Field(description="Total of the other invoices (a decimal string, two decimals)")
    other_statuses: list[str] = Field(description="The statuses of the other invoices, e.g. ['issued', 'paid']")
    # Kept for existing clients with their old meaning; the page shows the fields above.
    amount_billed: str = Field(
        description="Deprecated: drafted_amount + other_amount, the total of every invoice of the organization, "
        "type and period (void excluded), including ones this run did not draft",
        json_schema_extra={"deprecated": True},
    )
    invoices: int = Field(
        description="Deprecated: drafted_invoices + other_invoices, every invoice of the organization, type and "
        "period (void excluded), including ones this run did not draft",
        json_schema_extra={"deprecated": True},
    )
    task_url: str = Field(description="The organization's task instance (and its log) in the Airflow UI")


class RunPage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[Run]


class Organization(BaseModel):
    id: int
    name: str | None
    is_active: bool | None


class MonthInvoices(BaseModel):
    billing_period_start: date
    invoice_type: str
    currency: str = Field(description="ISO 4217 code: each currency has its own rows")
    invoices: int
    amount: str = Field(description="Total of the invoices (void excluded), a decimal string with two decimals")


class MonthFailures(BaseModel):
    billing_period_start: date
    run_type: str
    runs: int
    failed_runs: int
    failure_rate: float
    leases: int
    failed_leases: int


class Duration(BaseModel):
    organization_id: int
    organization_name: str | None
    billing_period_start: date
    run_type: str
    seconds: float


class Trends(BaseModel):
    since: date
    invoices_per_month: list[MonthInvoices]
    failures_per_month: list[MonthFailures]
    durations: list[Duration]


class PreviewRequest(BaseModel):
    organization_ids: list[int] = Field(min_length=1, max_length=20)
    billing_month: str = Field(pattern=BILLING_MONTH_PATTERN, examples=["2027-01"])
    proration_method: ProrationMethod | None = Field(
        None, description="null: each organization's own method (its billing settings), as a run without one"
    )
    limit: int = Field(100, ge=1, le=500)
    offset: int = Field(0, ge=0)


def _task_urls(rows) -> dict[int, str]:
    """Link each row to its organization's mapped task instance (found by its label)."""
    urls = {}
    pairs = {(r.dag_id, r.dag_run_id) for r in rows}
    labels = {}
    if pairs:
        try:
            from airflow.models.taskinstance import TaskInstance
            from airflow.utils.session import create_session

            with create_session() as session:
                for ti in session.query(
                    TaskInstance.dag_id, TaskInstance.run_id, TaskInstance.map_index, TaskInstance.rendered_map_index
                ).filter(
                    TaskInstance.task_id == "bill_organization",
                    sa.tuple_(TaskInstance.dag_id, TaskInstance.run_id).in_(list(pairs)),
                ):
                    labels[(ti.dag_id, ti.run_id, ti.rendered_map_index)] = ti.map_index
        except Exception:  # the link is a convenience; the page works without it
            labels = {}
    for r in rows:
        base = f"/dags/{r.dag_id}/runs/{r.dag_run_id}/tasks/bill_organization"
        map_index = labels.get((r.dag_id, r.dag_run_id, organization_label(r.organization_name, r.organization_id)))
        urls[r.id] = f"{base}/mapped/{map_index}" if map_index is not None else base
    return urls


def _run(row, url: str) -> Run:
    data = dict(row._mapping)
    for amount in ("drafted_amount", "other_amount", "amount_billed"):
        data[amount] = str(data[amount])
    data["duration_seconds"] = float(row.duration_seconds) if row.duration_seconds is not None else None
    return Run(**data, task_url=url)


read_runs = requires_dag_run_access("GET")
trigger_rent = requires_dag_run_access("POST", RENT_DAG_ID)
router = APIRouter()


@router.get("/api/runs", response_model=RunPage, dependencies=[read_runs], summary="Invoice runs, newest first")
def list_runs(
    organization_id: int | None = None,
    billing_month: str | None = Query(None, pattern=BILLING_MONTH_PATTERN),
    status: RunStatus | None = None,
    run_type: RunType | None = None,
    limit: int = Query(50, ge=1, le=200),
    offset: int = Query(0, ge=0),
    conn=Depends(read_only),
) -> RunPage:
    period = BillingPeriod.parse(billing_month).start if billing_month else None
    total, rows = queries.list_runs(
        conn,
        organization_id=organization_id,
        period_start=period,
        status=status,
        run_type=run_type,
        limit=limit,
        offset=offset,
    )
    urls = _task_urls(rows)
    return RunPage(total=total, limit=limit, offset=offset, items=[_run(r, urls[r.id]) for r in rows])


@router.get("/api/runs/{run_id}", response_model=Run, dependencies=[read_runs], summary="One invoice run")
def get_run(run_id: int, conn=Depends(read_only)) -> Run:
    row = queries.get_run(conn, run_id)
    if row is None:
        raise HTTPException(404, f"invoice run {run_id} does not exist")
    return _run(row, _task_urls([row])[row.id])


@router.get("/api/organizations", response_model=list[Organization], dependencies=[read_runs])
def list_organizations(conn=Depends(read_only)) -> list[Organization]:
    return [Organization(**dict(r._mapping)) for r in queries.organizations(conn)]


@router.get("/api/trends", response_model=Trends, dependencies=[read_runs], summary="Trends over the last months")
def trends(months: int = Query(12, ge=1, le=60), conn=Depends(read_only)) -> Trends:
    # The first day of the month `months - 1` months ago: the window ends with the current month.
    first = pendulum.today("UTC").start_of("month").subtract(months=months - 1)
    since = date(first.year, first.month, 1)
    return Trends(
        since=since,
        invoices_per_month=[
            MonthInvoices(
                billing_period_start=r.billing_period_start,
                invoice_type=r.invoice_type,
                currency=r.currency,
                invoices=r.invoices,
                amount=str(r.amount),
            )
            for r in queries.invoices_per_month(conn, since)
        ],
        failures_per_month=[
            MonthFailures(**dict(r._mapping), failure_rate=(r.failed_runs / r.runs) if r.runs else 0.0)
            for r in queries.failure_rate_per_month(conn, since)
        ],
        durations=[
            Duration(**{**dict(r._mapping), "seconds": float(r.seconds)}) for r in queries.durations(conn, since)
        ],
    )


@router.post("/api/preview", dependencies=[trigger_rent], summary="What a rent run would write, written nowhere")
def preview(body: PreviewRequest) -> dict:
    from tentman.billing.preview import preview_rent

    period = BillingPeriod.parse(body.billing_month)
    with UnitOfWork(_engine(), read_only=True) as uow:
        known = set(queries.existing_organization_ids(uow.connection, body.organization_ids))
    unknown = sorted(set(body.organization_ids) - known)
    if unknown:
        raise HTTPException(422, f"organizations {unknown} do not exist")
    organizations = []
    for organization_id in body.organization_ids:
        with UnitOfWork(_engine(), statement_timeout="60s") as uow:  # never committed: nothing is written
            method = body.proration_method or _own_proration_method(uow.connection, organization_id)
            organizations.append(
                preview_rent(
                    uow.connection,
                    organization_id=organization_id,
                    period=period,
                    proration_method=method,
                    limit=body.limit,
                    offset=body.offset,
                )
            )
    return {"organizations": organizations}


def _own_proration_method(conn, organization_id: int) -> ProrationMethod:
    from tentman.billing.organization_settings import billing_settings

    return billing_settings(conn, organization_id).effective_proration_method


@router.get("/ui/", response_class=HTMLResponse, include_in_schema=False)
async def page(request: Request):
    """The page (no data in it): a visitor without a session is sent to Airflow's login."""
    from airflow.api_fastapi.app import get_auth_manager

    if not request.cookies.get("_token") and not request.headers.get("authorization"):
        return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)))
    await current_user(request)  # an invalid or expired session is refused like the API
    return HTMLResponse(_page_html())


@functools.cache
def _page_html() -> str:
    """The page, with the names it shows (DAG ids, run types, proration methods) filled in from tentman.names."""
    names = {
        "rent_dag_id": RENT_DAG_ID,
        "utility_dag_id": UTILITY_DAG_ID,
        "rent_run": RENT_RUN,
        "utility_run": UTILITY_RUN,
        "rent_invoice": INVOICE_TYPE_OF_RUN[RENT_RUN],
        "utility_invoice": INVOICE_TYPE_OF_RUN[UTILITY_RUN],
        "run_statuses": list(RUN_STATUSES),
        "proration_methods": [method.value for method in ProrationMethod],
        "default_proration_method": DEFAULT_PRORATION_METHOD.value,
    }
    return (STATIC / "index.html").read_text().replace("__TENTMAN_NAMES__", json.dumps(names))


@router.get("/ui/whoami", include_in_schema=False)
def whoami(current=Depends(current_user)) -> dict:
    from tentman.ui.organization_settings import can_edit_billing_settings

    # The page shows the billing settings form only to those who may use it.
    return {"user": current.get_name(), "can_edit_billing_settings": can_edit_billing_settings(current)}


def create_app() -> FastAPI:
    app = FastAPI(
        title="TentMan billing runs",
        version="1.0",
        description="Results, errors and trends of the TentMan billing DAGs, and a preview of a rent run.",
        # Served below behind the same login as everything else.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.include_router(router)
    from tentman.ui.organization_settings import router as organization_settings_router

    app.include_router(organization_settings_router)

    @app.get("/openapi.json", include_in_schema=False, dependencies=[read_runs])
    def openapi() -> dict:
        return app.openapi()

    @app.get("/docs", include_in_schema=False, dependencies=[read_runs])
    def docs() -> HTMLResponse:
        from fastapi.openapi.docs import get_swagger_ui_html

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
