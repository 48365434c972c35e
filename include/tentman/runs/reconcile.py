"""The step after the aggregation: reconcile each organization the run billed, and fail the run on a
violation (tentman.billing.reconciliation says what is checked). Also `tentman runs reconcile`."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from sqlalchemy.engine import Engine

from tentman.billing.periods import BillingPeriod
from tentman.billing.reconciliation import (
    Reconciliation,
    ReconciliationUnit,
    invoice_runs_to_reconcile,
    latest_invoice_runs,
    reconcile_invoice_run,
    reconcile_invoice_runs,
    reconciliation_units,
)
from tentman.db import UnitOfWork
from tentman.runs.organizations import organization_labels

log = logging.getLogger(__name__)

# Units reconciled at once (a large organization, or a batch of small ones: reconciliation_units),
# each in its own transaction on a connection of its own: one at a time, this process and the server
# wait on each other (docs/scaling.md, "The cost of reconciliation").
RECONCILE_CONNECTIONS = 4


class ReconciliationFailed(RuntimeError):
    """A violation: no retry can fix data, so the task fails at once and the alert names it."""

    def __init__(self, message: str, organizations: list[str]):
        super().__init__(message)
        self.organizations = organizations


def reconcile_dag_run(engine: Engine, *, dag_id: str, dag_run_id: str) -> list[Reconciliation]:
    """Reconcile every organization the DAG run billed (one transaction each, verdicts stored); log
    one line per organization. raise_on_violations then fails the run on a violation."""
    with UnitOfWork(engine, read_only=True) as uow:
        invoice_run_ids = invoice_runs_to_reconcile(uow.connection, dag_id=dag_id, dag_run_id=dag_run_id)
        units = reconciliation_units(uow.connection, invoice_run_ids)
    return _reconcile(engine, invoice_run_ids, units)


def reconcile_period(
    engine: Engine, *, run_type: str, period: BillingPeriod, organization_id: int | None = None
) -> list[Reconciliation]:
    """Reconcile each organization's latest run of `run_type` for `period` (on demand: after a manual
    fix, say). Returns the results without raising."""
    with UnitOfWork(engine, read_only=True) as uow:
        invoice_run_ids = latest_invoice_runs(
            uow.connection, run_type=run_type, period=period, organization_id=organization_id
        )
        units = reconciliation_units(uow.connection, invoice_run_ids)
    return _reconcile_each(engine, invoice_run_ids, units)


def _reconcile_each(
    engine: Engine, invoice_run_ids: list[int], units: list[ReconciliationUnit]
) -> list[Reconciliation]:
    """Each unit (reconciliation_units: a large run on its own, small ones in a batch) reconciled and
    committed, RECONCILE_CONNECTIONS at once; the results in the order of `invoice_run_ids`. The first
    error is raised once all have ended."""
    with ThreadPoolExecutor(max_workers=RECONCILE_CONNECTIONS, thread_name_prefix="reconcile") as pool:
        by_run = {r.invoice_run_id: r for results in pool.map(partial(_reconcile_unit, engine), units) for r in results}
    return [by_run[run_id] for run_id in invoice_run_ids]


def _reconcile_unit(engine: Engine, unit: ReconciliationUnit) -> list[Reconciliation]:
    with UnitOfWork(engine, statement_timeout="300s") as uow:
        if unit.batched:
            results = reconcile_invoice_runs(uow.connection, unit.invoice_run_ids)
        else:
            [invoice_run_id] = unit.invoice_run_ids
            results = [reconcile_invoice_run(uow.connection, invoice_run_id)]
        uow.commit()
    return results


def _reconcile(engine: Engine, invoice_run_ids: list[int], units: list[ReconciliationUnit]) -> list[Reconciliation]:
    results = _reconcile_each(engine, invoice_run_ids, units)
    labels = organization_labels(engine, [r.organization_id for r in results])
    for r in results:
        label = labels[r.organization_id]
        (log.info if r.ok else log.error)(
            "%s %s %s: reconciliation %s", r.run_type, r.billing_period_start[:7], label, r.describe()
        )
    return results


def raise_on_violations(engine: Engine, results: list[Reconciliation]) -> None:
    """ReconciliationFailed naming each organization with a violation, its checks and example ids."""
    failed = [r for r in results if not r.ok]
    if not failed:
        return
    labels = organization_labels(engine, [r.organization_id for r in failed])
    details = "; ".join(f"{labels[r.organization_id]}: {r.describe()}" for r in failed)
    raise ReconciliationFailed(
        f"reconciliation found violations for {len(failed)} of {len(results)} organizations: {details}",
        organizations=[labels[r.organization_id] for r in failed],
    )
