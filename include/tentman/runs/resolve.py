"""The first step of a run: resolve its billing period and validate its params into a BillingRun."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tentman.billing.periods import BillingPeriod, rent_period_for_run, utility_period_for_run
from tentman.db import UnitOfWork
from tentman.migrate import check_schema
from tentman.names import DEFAULT_PRORATION_METHOD, RunType
from tentman.runs.billing_run import (
    BillingRun,
    parse_dry_run,
    parse_organization_ids,
    parse_run_proration_method,
)

log = logging.getLogger(__name__)

# A scheduled run starting further than this from its logical date is reported in the log.
LATE_RUN_TOLERANCE = timedelta(days=1)


def resolve_billing_period(
    engine: Engine,
    *,
    run_type: str,
    params: dict,
    logical_date: datetime | None,
    run_after: datetime,
    scheduled: bool = False,
    started_at: datetime | None = None,
) -> BillingRun:
    """Resolve the run's billing period and validate its params; raises ValueError naming a bad value,
    SchemaNotReady when the TentMan database is not migrated to this bundle's schema or its application
    tables break the schema contract (tentman.application_schema).

    The period comes from `billing_month` when given, otherwise from the run's logical date (or,
    for a manual run without one, its `run_after`) — never from the wall clock, so late runs and
    backfills bill the month they stand for.
    """
    if run_type not in tuple(RunType):
        raise ValueError(f"run_type {run_type!r} is not one of {', '.join(RunType)}")
    # A schema behind the bundle, or application tables without what billing relies on, would fail
    # deep inside every organization task, retried ten times: fail here, naming each difference.
    for warning in check_schema(engine):
        log.warning("TentMan schema: %s", warning)
    period = _billing_period(run_type, params.get("billing_month"), logical_date or run_after)
    method = parse_run_proration_method(run_type, params.get("proration_method"))
    organization_ids = parse_organization_ids(params.get("organization_ids"))
    dry_run = parse_dry_run(params.get("dry_run"))
    if organization_ids is not None:
        with UnitOfWork(engine, read_only=True) as uow:
            _check_organizations_can_be_billed(uow.connection, organization_ids)
    if scheduled and logical_date is not None and started_at is not None:
        _warn_if_late(period, logical_date, started_at)

    run = BillingRun(
        run_type=RunType(run_type).value,  # a plain str: the run travels as JSON
        billing_period_start=period.start.isoformat(),
        billing_period_end=period.end.isoformat(),
        proration_method=method,
        dry_run=dry_run,
        organization_ids=organization_ids,
    )
    log.info(
        "Billing run %s for %s (%s to %s), proration %s, dry_run=%s, organizations=%s",
        run.run_type,
        period.label,
        run.billing_period_start,
        run.billing_period_end,
        method
        or (
            f"each organization's own, else {DEFAULT_PRORATION_METHOD.value}"
            if run_type == RunType.MONTHLY_RENT
            else "-"
        ),
        dry_run,
        organization_ids or "all active",
    )
    return run


def _billing_period(run_type: str, billing_month: object, moment: datetime) -> BillingPeriod:
    if billing_month is not None:
        return BillingPeriod.parse(billing_month)
    return rent_period_for_run(moment) if run_type == RunType.MONTHLY_RENT else utility_period_for_run(moment)


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
