"""The `invoice_runs` table: one row per organization per DAG run, written as the run goes."""

from __future__ import annotations

import json
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tentman.billing.periods import BillingPeriod
from tentman.billing.results import OrganizationBillingResult
from tentman.db import execute
from tentman.names import RunStatus


@dataclass(frozen=True)
class RunKey:
    """Identifies an organization's row of one DAG run."""

    dag_id: str
    dag_run_id: str
    organization_id: int


def open_invoice_run(
    conn: Connection,
    key: RunKey,
    *,
    run_type: str,
    period: BillingPeriod,
    proration_method: str | None,
) -> int:
    """Create the organization's row, running, or reset it when the task re-runs."""
    return _write_invoice_run(
        conn,
        key,
        run_type=run_type,
        period=period,
        proration_method=proration_method,
        status=RunStatus.RUNNING,
        errors=[],
    )


def record_on_hold(
    conn: Connection,
    key: RunKey,
    *,
    run_type: str,
    period: BillingPeriod,
    proration_method: str | None,
    error: dict,
) -> int:
    """The organization's row says it is on hold: zero counts, the hold as its one error, complete.

    A re-run of the task (cleared after the hold was set) turns its earlier row into this one; the
    invoices that earlier attempt wrote stay as they are, like every draft of an organization on hold.
    """
    return _write_invoice_run(
        conn,
        key,
        run_type=run_type,
        period=period,
        proration_method=proration_method,
        status=RunStatus.ON_HOLD,
        errors=[error],
    )


def _write_invoice_run(
    conn: Connection,
    key: RunKey,
    *,
    run_type: str,
    period: BillingPeriod,
    proration_method: str | None,
    status: RunStatus,
    errors: list[dict],
) -> int:
    """Insert or reset the organization's row of the run, with zero counts; complete unless running."""
    return execute(
        conn,
        """
            INSERT INTO invoice_runs (organization_id, run_type, billing_period_start, billing_period_end,
                                      proration_method, status, errors, dag_id, dag_run_id,
                                      started_at, completed_at)
            VALUES (:org, :run_type, :period_start, :period_end, :method, :status, CAST(:errors AS jsonb),
                    :dag_id, :dag_run_id, now(), CASE WHEN :status <> :running THEN now() END)
            ON CONFLICT (dag_id, dag_run_id, organization_id) DO UPDATE
            SET run_type = excluded.run_type,
                billing_period_start = excluded.billing_period_start,
                billing_period_end = excluded.billing_period_end,
                proration_method = excluded.proration_method,
                status = excluded.status, total_leases = 0, success_count = 0, skipped_count = 0,
                failure_count = 0, errors = excluded.errors, started_at = now(),
                completed_at = excluded.completed_at
            RETURNING id
            """,
        {
            "org": key.organization_id,
            "run_type": run_type,
            "period_start": period.start,
            "period_end": period.end,
            "method": proration_method,
            "status": status,
            "running": RunStatus.RUNNING,
            "errors": json.dumps(errors),
            "dag_id": key.dag_id,
            "dag_run_id": key.dag_run_id,
        },
    ).scalar_one()


def complete_invoice_run(conn: Connection, invoice_run_id: int, result: OrganizationBillingResult) -> None:
    execute(
        conn,
        """
            -- clock_timestamp(): now() would be the start of the billing transaction itself.
            UPDATE invoice_runs
            SET status = :status, total_leases = :total, success_count = :success,
                skipped_count = :skipped, failure_count = :failure,
                errors = CAST(:errors AS jsonb), completed_at = clock_timestamp()
            WHERE id = :id
            """,
        {
            "id": invoice_run_id,
            "status": result.status,
            "total": result.total_leases,
            "success": result.success_count,
            "skipped": result.skipped_count,
            "failure": result.failure_count,
            "errors": json.dumps(result.errors),
        },
    )


def note_attempt_error(conn: Connection, invoice_run_id: int, error: str) -> None:
    """Keep the last error of a failed attempt on the (still running) row, for the aggregation."""
    execute(
        conn,
        """
            UPDATE invoice_runs SET errors = CAST(:errors AS jsonb)
            WHERE id = :id AND status = :running
            """,
        {
            "id": invoice_run_id,
            "running": RunStatus.RUNNING,
            "errors": json.dumps([{"lease_id": None, "error": error}]),
        },
    )


def fail_unfinished_invoice_runs(
    conn: Connection,
    *,
    dag_id: str,
    dag_run_id: str,
    organization_ids: list[int],
    run_type: str,
    period: BillingPeriod,
    proration_method: str | None,
) -> None:
    """Mark failed every listed organization whose row is missing or still running.

    Called by the aggregation task once all organization tasks are done: a row left running
    belongs to a task that failed after its retries. Finished rows (completed, …, on hold) are
    left as they are.
    """
    execute(
        conn,
        """
            INSERT INTO invoice_runs (organization_id, run_type, billing_period_start, billing_period_end,
                                      proration_method, status, errors, dag_id, dag_run_id,
                                      started_at, completed_at)
            SELECT o.id, :run_type, :period_start, :period_end, :method, :failed,
                   jsonb_build_array(jsonb_build_object(
                       'lease_id', NULL,
                       'error', 'the billing task of this organization failed after its retries; '
                                || 'no invoice was changed by it (see the task log)')),
                   :dag_id, :dag_run_id, now(), now()
            FROM organizations o
            WHERE o.id = ANY(:orgs)
            ON CONFLICT (dag_id, dag_run_id, organization_id) DO UPDATE
            SET status = :failed,
                completed_at = now(),
                errors = CASE
                    WHEN jsonb_array_length(invoice_runs.errors) > 0 THEN invoice_runs.errors
                    ELSE excluded.errors
                END
            WHERE invoice_runs.status = :running
            """,
        {
            "orgs": list(organization_ids),
            "run_type": run_type,
            "period_start": period.start,
            "period_end": period.end,
            "method": proration_method,
            "dag_id": dag_id,
            "dag_run_id": dag_run_id,
            "failed": RunStatus.FAILED,
            "running": RunStatus.RUNNING,
        },
    )


def invoice_runs_of_dag_run(conn: Connection, dag_id: str, dag_run_id: str) -> list[sa.Row]:
    return list(
        execute(
            conn,
            """
                SELECT r.*, o.name AS organization_name
                FROM invoice_runs r JOIN organizations o ON o.id = r.organization_id
                WHERE r.dag_id = :dag_id AND r.dag_run_id = :dag_run_id
                ORDER BY r.organization_id
                """,
            {"dag_id": dag_id, "dag_run_id": dag_run_id},
        )
    )
