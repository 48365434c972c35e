"""The steps of a billing DAG run, as plain functions over an engine.

The DAG files wire these together (resolve → list organizations → one task per organization →
record the runs); everything here is testable without Airflow. Values passed between steps are
plain JSON-able dicts because Airflow carries them as XComs.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tentman.billing.organization_settings import BillingSettings, billing_settings
from tentman.billing.periods import BillingPeriod, rent_period_for_run, utility_period_for_run
from tentman.billing.rent import generate_rent_invoices
from tentman.billing.results import OrganizationBillingResult
from tentman.billing.utility import default_due_date, generate_utility_invoices
from tentman.db import UnitOfWork
from tentman.migrate import check_schema
from tentman.names import DEFAULT_PRORATION_METHOD, ON_HOLD, RENT_RUN, RUN_TYPES, ProrationMethod, organization_label
from tentman.runs import invoice_runs
from tentman.runs.invoice_runs import RunKey
from tentman.settings import utility_due_days

log = logging.getLogger(__name__)

# The run's log names this many organizations to bill, then counts the rest.
LOGGED_ORGANIZATIONS = 50

# A scheduled run starting further than this from its logical date is reported in the log.
LATE_RUN_TOLERANCE = timedelta(days=1)


class BillingRunFailed(RuntimeError):
    """Raised by the aggregation step so the DAG run shows as failed (and alerts fire)."""

    def __init__(self, message: str, organizations: list[str] | None = None):
        super().__init__(message)
        self.organizations = organizations or []


@dataclass(frozen=True)
class BillingRun:
    """What one DAG run bills: resolved and validated once, then passed to every task."""

    run_type: str
    billing_period_start: str
    billing_period_end: str
    # Set only when the run's params name one (it then wins); None: each organization's own method.
    proration_method: str | None
    dry_run: bool
    organization_ids: list[int] | None

    @property
    def period(self) -> BillingPeriod:
        return BillingPeriod.from_dict(asdict(self))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BillingRun:
        return cls(**data)


def _parse_organization_ids(value: object) -> list[int] | None:
    expected = "expected a non-empty list of organization ids (whole numbers), or null for all active organizations"
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"organization_ids {value!r} is not valid; {expected}")
    ids = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, str)) or not str(item).strip().isdigit():
            raise ValueError(f"organization_ids contains {item!r}; {expected}")
        ids.append(int(item))
    return sorted(set(ids))


def _parse_dry_run(value: object) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValueError(f"dry_run {value!r} is not valid; expected true or false")
    return value


def resolve_billing_run(
    engine: Engine,
    *,
    run_type: str,
    params: dict,
    logical_date: datetime | None,
    run_after: datetime,
    scheduled: bool = False,
    started_at: datetime | None = None,
) -> BillingRun:
    """Validate a run's params and resolve its billing period; raises ValueError naming a bad value,
    SchemaNotReady when the TentMan database is not migrated to this bundle's schema or its application
    tables break the schema contract (tentman.application_schema).

    The period comes from `billing_month` when given, otherwise from the run's logical date (or,
    for a manual run without one, its `run_after`) — never from the wall clock, so late runs and
    backfills bill the month they stand for.
    """
    if run_type not in RUN_TYPES:
        raise ValueError(f"run_type {run_type!r} is not one of {', '.join(RUN_TYPES)}")
    # A schema behind the bundle, or application tables without what billing relies on, would fail
    # deep inside every organization task, retried ten times: fail here, naming each difference.
    for warning in check_schema(engine):
        log.warning("TentMan schema: %s", warning)
    period = _billing_period(run_type, params.get("billing_month"), logical_date or run_after)
    method = _parse_run_proration_method(run_type, params.get("proration_method"))
    organization_ids = _parse_organization_ids(params.get("organization_ids"))
    dry_run = _parse_dry_run(params.get("dry_run"))
    if organization_ids is not None:
        with UnitOfWork(engine, read_only=True) as uow:
            _check_organizations_can_be_billed(uow.connection, organization_ids)
    if scheduled and logical_date is not None and started_at is not None:
        _warn_if_late(period, logical_date, started_at)

    run = BillingRun(
        run_type=run_type,
        billing_period_start=period.start.isoformat(),
        billing_period_end=period.end.isoformat(),
        proration_method=method,
        dry_run=dry_run,
        organization_ids=organization_ids,
    )
    log.info(
        "Billing run %s for %s (%s to %s), proration %s, dry_run=%s, organizations=%s",
        run_type,
        period.label,
        run.billing_period_start,
        run.billing_period_end,
        method or (f"each organization's own, else {DEFAULT_PRORATION_METHOD.value}" if run_type == RENT_RUN else "-"),
        dry_run,
        organization_ids or "all active",
    )
    return run


def _parse_run_proration_method(run_type: str, value: object) -> str | None:
    """The run's explicit method (validated), or None: each organization is billed with its own."""
    if run_type != RENT_RUN or value is None:
        return None
    return ProrationMethod.parse(value).value


def _billing_period(run_type: str, billing_month: object, moment: datetime) -> BillingPeriod:
    if billing_month is not None:
        return BillingPeriod.parse(billing_month)
    return rent_period_for_run(moment) if run_type == RENT_RUN else utility_period_for_run(moment)


def _check_organizations_can_be_billed(conn: Connection, organization_ids: list[int]) -> None:
    """Refuse ids of organizations that do not exist or are inactive, naming them."""
    rows = conn.execute(
        sa.text("SELECT id, is_active FROM organizations WHERE id = ANY(:ids)"),
        {"ids": organization_ids},
    ).all()
    known = {r.id: r.is_active for r in rows}
    unknown = [i for i in organization_ids if i not in known]
    if unknown:
        raise ValueError(
            f"organization_ids names organizations that do not exist: {unknown}; "
            "expected ids of active organizations, or null for all of them"
        )
    inactive = [i for i in organization_ids if not known[i]]
    if inactive:
        raise ValueError(
            f"organization_ids names inactive organizations: {inactive}; inactive organizations are not billed"
        )


def _warn_if_late(period: BillingPeriod, logical_date: datetime, started_at: datetime) -> None:
    drift = abs(started_at - logical_date)
    if drift > LATE_RUN_TOLERANCE:
        log.warning(
            "Scheduled run started at %s, %s away from its logical date %s; billing %s as of the logical date",
            started_at.isoformat(),
            drift,
            logical_date.isoformat(),
            period.label,
        )


def list_organizations(engine: Engine, run: BillingRun) -> list[int]:
    """The ids of the organizations to bill, in stable id order.

    Ids only, on purpose: every organization task reads this whole list to find its own entry
    (Airflow pulls an unmapped upstream's value whole into each mapped instance), so each byte
    is read once per organization — at 10,000 organizations, 10,000 times. Names are read by
    the tasks that show them (`organization_labels`).
    """
    with UnitOfWork(engine, read_only=True) as uow:
        rows = uow.connection.execute(
            sa.text(
                """
                SELECT id, name FROM organizations
                WHERE is_active AND (CAST(:ids AS bigint[]) IS NULL OR id = ANY(:ids))
                ORDER BY id
                """
            ),
            {"ids": run.organization_ids},
        ).all()
        if run.organization_ids is None:
            _warn_about_orphan_leases(uow.connection)
    labels = [organization_label(r.name, r.id) for r in rows]
    shown = ", ".join(labels[:LOGGED_ORGANIZATIONS])
    more = f" and {len(labels) - LOGGED_ORGANIZATIONS:,} more" if len(labels) > LOGGED_ORGANIZATIONS else ""
    log.info("%d organizations to bill: %s%s", len(labels), shown, more)
    return [r.id for r in rows]


def organization_labels(engine: Engine, organization_ids: list[int]) -> dict[int, str]:
    """Each organization's label ("Acme Homes (#3)"); an id no longer in the table keeps a bare one."""
    with UnitOfWork(engine, read_only=True) as uow:
        names = dict(
            uow.connection.execute(
                sa.text("SELECT id, name FROM organizations WHERE id = ANY(:ids)"), {"ids": list(organization_ids)}
            ).all()
        )
    return {i: organization_label(names.get(i), i) for i in organization_ids}


def _warn_about_orphan_leases(conn) -> None:
    """Active leases of no known organization are billed by nobody: say so in the run's log."""
    orphans = (
        conn.execute(
            sa.text(
                """
            SELECT l.id FROM leases l
            WHERE l.status = 'active'
              AND NOT EXISTS (SELECT 1 FROM organizations o WHERE o.id = l.organization_id)
            ORDER BY l.id
            """
            )
        )
        .scalars()
        .all()
    )
    if orphans:
        shown = ", ".join(str(i) for i in orphans[:20]) + (", …" if len(orphans) > 20 else "")
        log.warning("%d active leases belong to no known organization and are never billed: %s", len(orphans), shown)


def _generate(run: BillingRun, method: str | None):
    """The engine call of this run's type: generate(conn, organization_id, invoice_run_id)."""
    if run.run_type == RENT_RUN:

        def generate(conn, organization_id, invoice_run_id):
            return generate_rent_invoices(
                conn,
                organization_id=organization_id,
                period=run.period,
                proration_method=ProrationMethod.parse(method),
                invoice_run_id=invoice_run_id,
            )

        return generate
    due_date = default_due_date(run.period, utility_due_days())

    def generate(conn, organization_id, invoice_run_id):
        return generate_utility_invoices(
            conn,
            organization_id=organization_id,
            period=run.period,
            invoice_run_id=invoice_run_id,
            due_date=due_date,
        )

    return generate


def bill_organization(
    engine: Engine, run: BillingRun, organization_id: int, *, label: str | None = None, dag_id: str, dag_run_id: str
) -> dict:
    """Bill one organization in one transaction, with its `invoice_runs` row; returns its result.

    `label` names the organization in the logs; read from the database when not given.

    The organization's billing settings are read here, when its task starts (a hold set after the
    organization was listed still counts): a run for all organizations records one on hold as
    'on_hold' and bills nothing of it; a run naming it bills it with a warning. A rent run without
    its own proration method bills with the organization's, else the platform default.

    An organization-level failure (connection lost, deadlock, …) rolls everything back, notes the
    error on the row and re-raises so Airflow retries the organization. A dry run computes the
    same result and rolls back: nothing is written, not even the run row.
    """
    if label is None:
        label = organization_labels(engine, [organization_id])[organization_id]
    with UnitOfWork(engine, read_only=True) as uow:
        settings = billing_settings(uow.connection, organization_id)
    method = _proration_method_for(run, settings)
    held = settings.billing_hold and run.organization_ids is None
    if settings.billing_hold and not held:
        log.warning(
            "%s is on billing hold (%s); billing it because this run names it in organization_ids",
            label,
            settings.hold_reason,
        )
    generate = _generate(run, method)
    if run.dry_run:
        if held:
            return _on_hold(label, settings, method, dry_run=True)
        with UnitOfWork(engine) as uow:  # never committed
            result = generate(uow.connection, organization_id, None)
        _log_result(label, result, dry_run=True)
        return {**result.to_dict(), "proration_method": method}

    key = RunKey(dag_id, dag_run_id, organization_id)
    if held:
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
        return {**_on_hold(label, settings, method, dry_run=False), "invoice_run_id": invoice_run_id}
    with UnitOfWork(engine) as uow:
        invoice_run_id = invoice_runs.open_invoice_run(
            uow.connection, key, run_type=run.run_type, period=run.period, proration_method=method
        )
        uow.commit()
    try:
        with UnitOfWork(engine) as uow:
            result = generate(uow.connection, organization_id, invoice_run_id)
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
    if run.run_type != RENT_RUN:
        return None
    return run.proration_method or settings.effective_proration_method.value


def _hold_error(settings: BillingSettings) -> dict:
    return {"lease_id": None, "error": f"billing hold: {settings.hold_reason}"}


def _on_hold(label: str, settings: BillingSettings, method: str | None, *, dry_run: bool) -> dict:
    """The result of an organization the run does not bill because it is on hold: nothing done."""
    log.warning(
        "%s%s: status=%s, not billed: billing hold: %s",
        "[dry run] " if dry_run else "",
        label,
        ON_HOLD,
        settings.hold_reason,
    )
    return {
        **OrganizationBillingResult(settings.organization_id, errors=[_hold_error(settings)]).to_dict(),
        "status": ON_HOLD,
        "proration_method": method,
    }


def _note_attempt_error(engine: Engine, invoice_run_id: int, exc: Exception) -> None:
    try:
        with UnitOfWork(engine) as uow:
            invoice_runs.note_attempt_error(uow.connection, invoice_run_id, f"{type(exc).__name__}: {exc}"[:2000])
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

    Organizations whose task failed after its retries get a 'failed' row. Logs one summary line per
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
                **by_organization.get(i, {"status": "failed"}),
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
                "status": row.status if row else "failed",
                "total_leases": row.total_leases if row else 0,
                "success_count": row.success_count if row else 0,
                "skipped_count": row.skipped_count if row else 0,
                "failure_count": row.failure_count if row else 0,
                "errors": row.errors if row else [],
            }
        )
    return summary


def _raise_if_any_failed(run: BillingRun, summary: list[dict]) -> None:
    failed = [s for s in summary if s["status"] == "failed"]
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
