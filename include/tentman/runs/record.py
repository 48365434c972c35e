"""The last step of a run: complete its `invoice_runs` rows and fail the run if anything failed."""

from __future__ import annotations

import logging

from sqlalchemy.engine import Engine

from tentman.db import UnitOfWork
from tentman.names import RunStatus
from tentman.runs import invoice_runs
from tentman.runs.billing_run import BillingRun
from tentman.runs.organizations import organization_labels

log = logging.getLogger(__name__)


class BillingRunFailed(RuntimeError):
    """Raised by the aggregation step so the DAG run shows as failed (and alerts fire)."""

    def __init__(self, message: str, organizations: list[str] | None = None):
        super().__init__(message)
        self.organizations = organizations or []


def record_invoice_runs(
    engine: Engine,
    run: BillingRun | None,
    organization_ids: list[int] | None,
    results: list[dict],
    *,
    dag_id: str,
    dag_run_id: str,
) -> list[dict]:
    """Aggregation step (runs whatever happened upstream): complete the run's `invoice_runs` rows.

    Organizations whose task failed after its retries get a failed row. Logs one summary line per
    organization, then raises BillingRunFailed if anything failed, so the DAG run is marked failed.
    `results` are the successful organization tasks' return values, matched by organization id
    (never by position: failed instances leave no result).
    """
    if run is None:
        raise BillingRunFailed(
            "the billing period could not be resolved; nothing was billed (see the first task's log)"
        )
    if organization_ids is None:
        raise BillingRunFailed("the organizations could not be listed; nothing was billed (see that task's log)")
    labels = organization_labels(engine, organization_ids)
    if run.dry_run:
        by_organization = {r["organization_id"]: r for r in results or []}
        summary = [
            {
                "organization_id": i,
                "organization": labels[i],
                **by_organization.get(i, {"status": RunStatus.FAILED.value}),
            }
            for i in organization_ids
        ]
    else:
        summary = _complete_invoice_runs(engine, run, labels, dag_id=dag_id, dag_run_id=dag_run_id)
    for s in summary:
        log.info(
            "%s %s %s: %s, leases=%s success=%s skipped=%s failed=%s",
            "[dry run]" if run.dry_run else "",
            run.period.label,
            s["organization"],
            s["status"],
            s.get("total_leases", 0),
            s.get("success_count", 0),
            s.get("skipped_count", 0),
            s.get("failure_count", 0),
        )
    _raise_if_any_failed(run, summary)
    return summary


def _complete_invoice_runs(
    engine: Engine, run: BillingRun, labels: dict[int, str], *, dag_id: str, dag_run_id: str
) -> list[dict]:
    """Mark the organizations whose task never finished as failed; the summary of every row.

    `labels`: the run's organizations, id → label, in billing order."""
    with UnitOfWork(engine) as uow:
        invoice_runs.fail_unfinished_invoice_runs(
            uow.connection,
            dag_id=dag_id,
            dag_run_id=dag_run_id,
            organization_ids=list(labels),
            run_type=run.run_type,
            period=run.period,
            proration_method=run.proration_method,
        )
        rows = {r.organization_id: r for r in invoice_runs.invoice_runs_of_dag_run(uow.connection, dag_id, dag_run_id)}
        uow.commit()
    summary = []
    for organization_id, label in labels.items():
        row = rows.get(organization_id)
        summary.append(
            {
                "organization_id": organization_id,
                "organization": label,
                "status": row.status if row else RunStatus.FAILED.value,
                "total_leases": row.total_leases if row else 0,
                "success_count": row.success_count if row else 0,
                "skipped_count": row.skipped_count if row else 0,
                "failure_count": row.failure_count if row else 0,
                "errors": row.errors if row else [],
            }
        )
    return summary


def _raise_if_any_failed(run: BillingRun, summary: list[dict]) -> None:
    failed = [s for s in summary if s["status"] == RunStatus.FAILED]
    if not failed:
        return
    details = "; ".join(
        f"{s['organization']}: {(s.get('errors') or [{}])[0].get('error', 'task failed')}" for s in failed
    )
    raise BillingRunFailed(
        f"{run.run_type} billing for {run.period.label} failed for {len(failed)} of "
        f"{len(summary)} organizations: {details}",
        organizations=[s["organization"] for s in failed],
    )
