"""The organization step: bill one organization of a run — a dry run, an organization on hold, or
billing it with its `invoice_runs` row, each a function of its own."""

from __future__ import annotations

import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.engine import Connection, Engine

from tentman.billing.organization_settings import BillingSettings, billing_settings
from tentman.billing.reconciliation import record_run_start
from tentman.billing.rent import generate_rent_invoices
from tentman.billing.results import OrganizationBillingResult
from tentman.billing.utility import default_due_date, generate_utility_invoices
from tentman.db import UnitOfWork
from tentman.errors import describe_error
from tentman.names import ProrationMethod, RunStatus, RunType
from tentman.runs import invoice_runs
from tentman.runs.billing_run import BillingRun
from tentman.runs.invoice_runs import RunKey
from tentman.runs.organizations import read_organization_labels
from tentman.settings import utility_due_days

log = logging.getLogger(__name__)

# The billing engine of a run's type, bound to the run: (connection, organization id, invoice run id
# or None for a dry run) → the organization's result.
InvoiceGenerator = Callable[[Connection, int, int | None], OrganizationBillingResult]


@dataclass(frozen=True)
class OrganizationToBill:
    """An organization as its task bills it: its label (logs, alerts, the mapped instance's name)
    and its billing settings."""

    label: str
    settings: BillingSettings


def read_organization_to_bill(engine: Engine, organization_id: int) -> OrganizationToBill:
    """The organization's label and billing settings, in one read-only transaction;
    UnknownOrganization if it does not exist."""
    with UnitOfWork(engine, read_only=True) as uow:
        label = read_organization_labels(uow.connection, [organization_id])[organization_id]
        return OrganizationToBill(label, billing_settings(uow.connection, organization_id))


def bill_organization(
    engine: Engine,
    run: BillingRun,
    organization_id: int,
    *,
    organization: OrganizationToBill | None = None,
    dag_id: str,
    dag_run_id: str,
) -> dict:
    """Bill one organization in one transaction, with its `invoice_runs` row; returns its result.

    `organization` is its label and settings as the task read them when it started (a hold set
    after the organization was listed still counts); read here when not given. A run for all
    organizations bills nothing of one on hold and records its row as on hold; a run naming it
    bills it with a warning. A rent run without its own proration method bills with the
    organization's, else the platform default.
    """
    if organization is None:
        organization = read_organization_to_bill(engine, organization_id)
    label, settings = organization.label, organization.settings
    method = _proration_method_for(run, settings)
    key = RunKey(dag_id, dag_run_id, organization_id)
    if settings.billing_hold:
        if run.organization_ids is None:
            return _skip_organization_on_hold(engine, run, key, label=label, settings=settings, method=method)
        log.warning(
            "%s is on billing hold (%s); billing it because this run names it in organization_ids",
            label,
            settings.hold_reason,
        )
    generate = _invoice_generator(run, method)
    if run.dry_run:
        return _dry_run_organization(engine, generate, organization_id, label=label, method=method)
    return _bill_and_record_organization(engine, run, generate, key, label=label, method=method)


def _invoice_generator(run: BillingRun, method: str | None) -> InvoiceGenerator:
    """The billing engine of the run's type, bound to the run's period (and rent's proration method)."""
    if run.run_type == RunType.MONTHLY_RENT:

        def generate_rent_invoices_of_run(conn, organization_id, invoice_run_id):
            return generate_rent_invoices(
                conn,
                organization_id=organization_id,
                period=run.period,
                proration_method=ProrationMethod.parse(method),
                invoice_run_id=invoice_run_id,
            )

        return generate_rent_invoices_of_run
    due_date = default_due_date(run.period, utility_due_days())

    def generate_utility_invoices_of_run(conn, organization_id, invoice_run_id):
        return generate_utility_invoices(
            conn,
            organization_id=organization_id,
            period=run.period,
            invoice_run_id=invoice_run_id,
            due_date=due_date,
        )

    return generate_utility_invoices_of_run


def _dry_run_organization(
    engine: Engine, generate: InvoiceGenerator, organization_id: int, *, label: str, method: str | None
) -> dict:
    """Compute the same result as billing, then roll back: nothing is written, not even the run row."""
    with UnitOfWork(engine) as uow:  # never committed
        result = generate(uow.connection, organization_id, None)
    _log_result(label, result, dry_run=True)
    return {**result.to_dict(), "proration_method": method}


def _skip_organization_on_hold(
    engine: Engine, run: BillingRun, key: RunKey, *, label: str, settings: BillingSettings, method: str | None
) -> dict:
    """An organization on hold, in a run for all organizations: nothing billed, its row says so
    (none in a dry run)."""
    if run.dry_run:
        return _on_hold_result(label, settings, method, dry_run=True)
    with UnitOfWork(engine) as uow:
        invoice_run_id = invoice_runs.record_on_hold(
            uow.connection,
            key,
            run_type=run.run_type,
            period=run.period,
            proration_method=method,
            error=_hold_error(settings),
        )
        uow.commit()
    return {**_on_hold_result(label, settings, method, dry_run=False), "invoice_run_id": invoice_run_id}


def _bill_and_record_organization(
    engine: Engine, run: BillingRun, generate: InvoiceGenerator, key: RunKey, *, label: str, method: str | None
) -> dict:
    """Open the organization's row (committed first, so that a failure is recorded on it), then bill
    and complete the row in one transaction.

    An organization-level failure (connection lost, deadlock, …) rolls the billing back, notes the
    error on the row and re-raises so Airflow retries the organization.
    """
    with UnitOfWork(engine) as uow:
        invoice_run_id = invoice_runs.open_invoice_run(
            uow.connection, key, run_type=run.run_type, period=run.period, proration_method=method
        )
        # The start of the window in which an issued invoice must not change (reconciliation).
        record_run_start(uow.connection, invoice_run_id)
        uow.commit()
    try:
        with UnitOfWork(engine) as uow:
            result = generate(uow.connection, key.organization_id, invoice_run_id)
            invoice_runs.complete_invoice_run(uow.connection, invoice_run_id, result)
            uow.commit()
    except Exception as exc:
        log.error("Billing organization %s failed: %s", label, exc)
        _note_attempt_error(engine, invoice_run_id, exc)
        raise
    _log_result(label, result, dry_run=False)
    # Peak memory of this task process: it must not grow with the organization's size.
    peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return {
        **result.to_dict(),
        "proration_method": method,
        "invoice_run_id": invoice_run_id,
        "peak_rss_mb": peak_rss_mb,
    }


def _proration_method_for(run: BillingRun, settings: BillingSettings) -> str | None:
    """Rent: the run's explicit method, else the organization's, else the platform default. Utility: none."""
    if run.run_type != RunType.MONTHLY_RENT:
        return None
    return run.proration_method or settings.effective_proration_method.value


def _hold_error(settings: BillingSettings) -> dict:
    return {"lease_id": None, "error": f"billing hold: {settings.hold_reason}"}


def _on_hold_result(label: str, settings: BillingSettings, method: str | None, *, dry_run: bool) -> dict:
    """The result of an organization the run does not bill because it is on hold: nothing done."""
    log.warning(
        "%s%s: status=%s, not billed: billing hold: %s",
        "[dry run] " if dry_run else "",
        label,
        RunStatus.ON_HOLD.value,
        settings.hold_reason,
    )
    return {
        **OrganizationBillingResult(settings.organization_id, errors=[_hold_error(settings)]).to_dict(),
        "status": RunStatus.ON_HOLD.value,
        "proration_method": method,
    }


def _note_attempt_error(engine: Engine, invoice_run_id: int, exc: Exception) -> None:
    try:
        with UnitOfWork(engine) as uow:
            invoice_runs.note_attempt_error(uow.connection, invoice_run_id, describe_error(exc))
            uow.commit()
    except Exception:  # the database may be the thing that is down
        log.warning("Could not record the error on invoice run %s", invoice_run_id, exc_info=True)


def _log_result(label: str, result: OrganizationBillingResult, *, dry_run: bool) -> None:
    log.info(
        "%s%s: status=%s leases=%d success=%d skipped=%d failed=%d created=%d updated=%d "
        "unchanged=%d stale_drafts_removed=%d amount=%s",
        "[dry run] " if dry_run else "",
        label,
        result.status,
        result.total_leases,
        result.success_count,
        result.skipped_count,
        result.failure_count,
        result.invoices_created,
        result.invoices_updated,
        result.invoices_unchanged,
        result.stale_drafts_removed,
        result.amount_billed,
    )
    for error in result.errors:
        log.warning("%s: lease %s not billed: %s", label, error["lease_id"], error["error"])
