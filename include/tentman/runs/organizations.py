"""The organizations a run bills: listing them, their labels, and the leases no organization bills."""

from __future__ import annotations

import logging

from sqlalchemy.engine import Connection, Engine

from tentman.billing.leases import LeaseStatus
from tentman.db import UnitOfWork, execute
from tentman.names import BILLING_SETTINGS_TABLE, SCHEDULES_DAG_ID, RunType, organization_label
from tentman.runs.billing_run import BillingRun

log = logging.getLogger(__name__)

# The settings column that, when set, says the organization bills that run type on its own schedule.
_OWN_SCHEDULE = {RunType.MONTHLY_RENT: "rent_schedule_day", RunType.UTILITY: "utility_schedule_weekday"}

# The run's log names this many organizations to bill, then counts the rest.
LOGGED_ORGANIZATIONS = 50
# And this many leases that belong to no organization.
LOGGED_ORPHAN_LEASES = 20


def list_organizations(engine: Engine, run: BillingRun) -> list[int]:
    """The ids of the organizations to bill, in stable id order.

    Ids only, on purpose: every organization task reads this whole list to find its own entry
    (Airflow pulls an unmapped upstream's value whole into each mapped instance), so each byte
    is read once per organization — at 10,000 organizations, 10,000 times. Names are read by
    the tasks that show them (`organization_labels`).
    """
    own_schedule = _OWN_SCHEDULE[run.run_type]
    with UnitOfWork(engine, read_only=True) as uow:
        rows = execute(
            uow.connection,
            f"""
                SELECT o.id, o.name, s.{own_schedule} IS NOT NULL AS has_own_schedule
                FROM organizations o LEFT JOIN {BILLING_SETTINGS_TABLE} s ON s.organization_id = o.id
                WHERE o.is_active AND (CAST(:ids AS bigint[]) IS NULL OR o.id = ANY(:ids))
                ORDER BY o.id
                """,
            {"ids": run.organization_ids},
        ).all()
        if run.organization_ids is None:
            _warn_about_orphan_leases(uow.connection)
    if run.organization_ids is None:
        # A run for all organizations leaves out those billed by their own schedule (the schedules
        # DAG); a run naming organizations bills them whatever their schedule.
        own = sum(r.has_own_schedule for r in rows)
        rows = [r for r in rows if not r.has_own_schedule]
        log.info(
            "%d organizations bill %s on their own schedule (%s) and are left out of this run",
            own,
            run.run_type,
            SCHEDULES_DAG_ID,
        )
    labels = [organization_label(r.name, r.id) for r in rows]
    shown = ", ".join(labels[:LOGGED_ORGANIZATIONS])
    more = f" and {len(labels) - LOGGED_ORGANIZATIONS:,} more" if len(labels) > LOGGED_ORGANIZATIONS else ""
    log.info("%d organizations to bill: %s%s", len(labels), shown, more)
    return [r.id for r in rows]


def organization_labels(engine: Engine, organization_ids: list[int]) -> dict[int, str]:
    """Each organization's label ("Acme Homes (#3)"); an id no longer in the table keeps a bare one."""
    with UnitOfWork(engine, read_only=True) as uow:
        return read_organization_labels(uow.connection, organization_ids)


def read_organization_labels(conn: Connection, organization_ids: list[int]) -> dict[int, str]:
    """organization_labels, on the caller's connection and transaction."""
    names = dict(
        execute(conn, "SELECT id, name FROM organizations WHERE id = ANY(:ids)", {"ids": list(organization_ids)}).all()
    )
    return {i: organization_label(names.get(i), i) for i in organization_ids}


def _warn_about_orphan_leases(conn: Connection) -> None:
    """Active leases of no known organization are billed by nobody: say so in the run's log."""
    orphans = (
        execute(
            conn,
            """
                SELECT l.id FROM leases l
                WHERE l.status = :active
                  AND NOT EXISTS (SELECT 1 FROM organizations o WHERE o.id = l.organization_id)
                ORDER BY l.id
                """,
            {"active": LeaseStatus.ACTIVE},
        )
        .scalars()
        .all()
    )
    if orphans:
        shown = ", ".join(str(i) for i in orphans[:LOGGED_ORPHAN_LEASES])
        more = ", …" if len(orphans) > LOGGED_ORPHAN_LEASES else ""
        log.warning(
            "%d active leases belong to no known organization and are never billed: %s", len(orphans), shown + more
        )
