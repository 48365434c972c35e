"""The runs, organizations and trends the page shows: read-only routes for whoever may read DAG runs."""

from __future__ import annotations

from datetime import date

import pendulum
import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Path, Query

from tentman.billing.periods import BillingPeriod
from tentman.names import BILL_ORGANIZATION_TASK, BILLING_MONTH_PATTERN, RunStatus, RunType, organization_label
from tentman.ui import queries
from tentman.ui.deps import read_only_connection, requires_reading_runs
from tentman.ui.models import (
    BIGINT_END,
    Duration,
    MonthFailures,
    MonthInvoices,
    Organization,
    Run,
    RunPage,
    Trends,
    error_responses,
)

router = APIRouter(dependencies=[requires_reading_runs])


@router.get("/api/runs", response_model=RunPage, summary="Invoice runs, newest first", responses=error_responses(422))
def list_runs(
    organization_id: int | None = Query(None, ge=1, lt=BIGINT_END),
    billing_month: str | None = Query(None, pattern=BILLING_MONTH_PATTERN),
    status: RunStatus | None = None,
    run_type: RunType | None = None,
    limit: int = Query(50, ge=1, le=200),
    offset: int = Query(0, ge=0, lt=BIGINT_END),
    conn=Depends(read_only_connection),
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


@router.get("/api/runs/{run_id}", response_model=Run, summary="One invoice run", responses=error_responses(404, 422))
def get_run(run_id: int = Path(ge=1, lt=BIGINT_END), conn=Depends(read_only_connection)) -> Run:
    row = queries.get_run(conn, run_id)
    if row is None:
        raise HTTPException(404, f"invoice run {run_id} does not exist")
    return _run(row, _task_urls([row])[row.id])


@router.get("/api/organizations", response_model=list[Organization])
def list_organizations(conn=Depends(read_only_connection)) -> list[Organization]:
    return [Organization(**dict(r._mapping)) for r in queries.organizations(conn)]


@router.get("/api/trends", response_model=Trends, summary="Trends over the last months", responses=error_responses(422))
def trends(months: int = Query(12, ge=1, le=60), conn=Depends(read_only_connection)) -> Trends:
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


def _task_urls(rows) -> dict[int, str]:
    """Link each row to its organization's mapped task instance (found by its label)."""
    urls = {}
    pairs = {(r.dag_id, r.dag_run_id) for r in rows}
    labels = {}
    if pairs:
        try:
            # Imported on a request, like Airflow's other modules (tentman.ui.deps says why).
            from airflow.models.taskinstance import TaskInstance
            from airflow.utils.session import create_session

            with create_session() as session:
                for ti in session.query(
                    TaskInstance.dag_id, TaskInstance.run_id, TaskInstance.map_index, TaskInstance.rendered_map_index
                ).filter(
                    TaskInstance.task_id == BILL_ORGANIZATION_TASK,
                    sa.tuple_(TaskInstance.dag_id, TaskInstance.run_id).in_(list(pairs)),
                ):
                    labels[(ti.dag_id, ti.run_id, ti.rendered_map_index)] = ti.map_index
        except Exception:  # the link is a convenience; the page works without it
            labels = {}
    for run in rows:
        task_url = f"/dags/{run.dag_id}/runs/{run.dag_run_id}/tasks/{BILL_ORGANIZATION_TASK}"
        label = organization_label(run.organization_name, run.organization_id)
        map_index = labels.get((run.dag_id, run.dag_run_id, label))
        urls[run.id] = f"{task_url}/mapped/{map_index}" if map_index is not None else task_url
    return urls


def _run(row, url: str) -> Run:
    fields = dict(row._mapping)
    for amount in ("drafted_amount", "other_amount", "amount_billed"):
        fields[amount] = str(fields[amount])
    fields["duration_seconds"] = float(row.duration_seconds) if row.duration_seconds is not None else None
    return Run(**fields, task_url=url)
