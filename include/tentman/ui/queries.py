"""Read-only queries behind the "Billing runs" page: bounded and paginated, set-based SQL with bound values."""

from __future__ import annotations

from datetime import date

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tentman.names import (
    BILLING_SETTINGS_TABLE,
    RECONCILIATIONS_TABLE,
    InvoiceStatus,
    RunStatus,
    RunType,
    invoice_type_sql,
)

# With RECONCILIATION_OF_RUN joined as rc: the run's verdict, null while it has none (a failed, held or
# dry run, a run of an earlier release, or one whose reconciliation has not run yet: only its window).
RUN_COLUMNS = """
    r.id, r.dag_id, r.dag_run_id, r.organization_id, o.name AS organization_name, r.run_type,
    r.billing_period_start, r.billing_period_end, r.proration_method, r.status, r.total_leases,
    r.success_count, r.skipped_count, r.failure_count, r.errors, r.started_at, r.completed_at,
    extract(epoch FROM r.completed_at - r.started_at) AS duration_seconds,
    CASE WHEN rc.ok IS NOT NULL
         THEN jsonb_build_object('ok', rc.ok, 'checked_at', rc.checked_at, 'checks', rc.checks) END AS reconciliation
"""
RECONCILIATION_OF_RUN = f"LEFT JOIN {RECONCILIATIONS_TABLE} rc ON rc.invoice_run_id = r.id"

# The organization's invoices of the run's type and period (void ones left out), split into the
# ones this run drafted (linked to it by invoice_run_id: both engines link every draft they create
# or update, rent also the ones it finds unchanged) and the others (issued or paid ones it left
# alone, drafts of another run or of the app). Not every draft of the period, then: that is what
# tentman.runs.summary counts. One index range scan per run row on invoices_org_type_period_idx.
INVOICES_OF_RUN = f"""
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE i.invoice_run_id = r.id) AS drafted_invoices,
               coalesce(sum(i.total) FILTER (WHERE i.invoice_run_id = r.id), 0.00) AS drafted_amount,
               count(*) FILTER (WHERE i.invoice_run_id IS DISTINCT FROM r.id) AS other_invoices,
               coalesce(sum(i.total) FILTER (WHERE i.invoice_run_id IS DISTINCT FROM r.id), 0.00) AS other_amount,
               coalesce(array_agg(DISTINCT i.status) FILTER (WHERE i.invoice_run_id IS DISTINCT FROM r.id),
                        '{{}}') AS other_statuses,
               count(*) AS invoices,
               coalesce(sum(i.total), 0.00) AS amount_billed
        FROM invoices i
        WHERE i.organization_id = r.organization_id
          AND i.invoice_type = {invoice_type_sql("r.run_type")}
          AND i.billing_period_start = r.billing_period_start AND i.status <> :void
    ) amounts
"""
# What INVOICES_OF_RUN binds, for the statements that use it.
INVOICES_OF_RUN_PARAMS = {"void": InvoiceStatus.VOID}


def list_runs(
    conn: Connection,
    *,
    organization_id: int | None,
    period_start: date | None,
    status: RunStatus | None,
    run_type: RunType | None,
    limit: int,
    offset: int,
) -> tuple[int, list[sa.Row]]:
    where = """
        WHERE (CAST(:org AS bigint) IS NULL OR r.organization_id = :org)
          AND (CAST(:period_start AS date) IS NULL OR r.billing_period_start = :period_start)
          AND (CAST(:status AS text) IS NULL OR r.status = :status)
          AND (CAST(:run_type AS text) IS NULL OR r.run_type = :run_type)
    """
    params = {"org": organization_id, "period_start": period_start, "status": status, "run_type": run_type}
    total = conn.execute(sa.text(f"SELECT count(*) FROM invoice_runs r {where}"), params).scalar_one()
    rows = conn.execute(
        sa.text(
            f"""
            SELECT {RUN_COLUMNS}, amounts.*
            FROM (SELECT * FROM invoice_runs r {where}
                  ORDER BY r.started_at DESC, r.id DESC LIMIT :limit OFFSET :offset) r
            JOIN organizations o ON o.id = r.organization_id
            {RECONCILIATION_OF_RUN}
            {INVOICES_OF_RUN}
            ORDER BY r.started_at DESC, r.id DESC
            """
        ),
        {**params, **INVOICES_OF_RUN_PARAMS, "limit": limit, "offset": offset},
    ).all()
    return total, rows


def get_run(conn: Connection, run_id: int) -> sa.Row | None:
    return conn.execute(
        sa.text(
            f"""
            SELECT {RUN_COLUMNS}, amounts.*
            FROM invoice_runs r JOIN organizations o ON o.id = r.organization_id
            {RECONCILIATION_OF_RUN}
            {INVOICES_OF_RUN}
            WHERE r.id = :id
            """
        ),
        {**INVOICES_OF_RUN_PARAMS, "id": run_id},
    ).one_or_none()


def organizations(conn: Connection, limit: int = 5000) -> list[sa.Row]:
    return conn.execute(
        sa.text("SELECT id, name, is_active FROM organizations ORDER BY name, id LIMIT :limit"), {"limit": limit}
    ).all()


def existing_organization_ids(conn: Connection, organization_ids: list[int]) -> list[int]:
    return list(
        conn.execute(sa.text("SELECT id FROM organizations WHERE id = ANY(:ids)"), {"ids": organization_ids}).scalars()
    )


def invoices_per_month(conn: Connection, since: date) -> list[sa.Row]:
    """Invoices and their total per month, type and currency: amounts in different currencies never add up."""
    return conn.execute(
        sa.text(
            """
            SELECT billing_period_start, invoice_type, currency, count(*) AS invoices, sum(total) AS amount
            FROM invoices
            WHERE billing_period_start >= :since AND status <> :void
            GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
            """
        ),
        {"since": since, "void": InvoiceStatus.VOID},
    ).all()


def failure_rate_per_month(conn: Connection, since: date) -> list[sa.Row]:
    return conn.execute(
        sa.text(
            """
            SELECT billing_period_start, run_type,
                   count(*) AS runs,
                   count(*) FILTER (WHERE status = :failed) AS failed_runs,
                   coalesce(sum(total_leases), 0) AS leases,
                   coalesce(sum(failure_count), 0) AS failed_leases
            FROM invoice_runs
            WHERE billing_period_start >= :since
            GROUP BY 1, 2 ORDER BY 1, 2
            """
        ),
        {"since": since, "failed": RunStatus.FAILED},
    ).all()


def durations(conn: Connection, since: date, organizations_limit: int = 10) -> list[sa.Row]:
    """Longest run per organization and period, for the organizations with the longest runs."""
    return conn.execute(
        sa.text(
            """
            WITH d AS (
                SELECT organization_id, billing_period_start, run_type,
                       max(extract(epoch FROM completed_at - started_at)) AS seconds
                FROM invoice_runs
                WHERE billing_period_start >= :since AND completed_at IS NOT NULL
                GROUP BY 1, 2, 3
            ), top AS (
                SELECT organization_id FROM d GROUP BY 1 ORDER BY max(seconds) DESC LIMIT :n
            )
            SELECT d.organization_id, o.name AS organization_name, d.billing_period_start, d.run_type, d.seconds
            FROM d JOIN top USING (organization_id) JOIN organizations o ON o.id = d.organization_id
            ORDER BY d.organization_id, d.billing_period_start, d.run_type
            """
        ),
        {"since": since, "n": organizations_limit},
    ).all()


# The organization's latest invoice_runs row of the run type bound as :{name}, as one JSON object.
_LAST_RUN = """
    LEFT JOIN LATERAL (
        SELECT r.dag_run_id, r.status, r.billing_period_start, r.billing_period_end, r.proration_method,
               r.started_at, r.completed_at
        FROM invoice_runs r
        WHERE r.organization_id = o.id AND r.run_type = :{name}
        ORDER BY r.started_at DESC, r.id DESC LIMIT 1
    ) {name} ON true
"""


def organizations_with_settings(conn: Connection, limit: int = 5000) -> list[sa.Row]:
    """Each organization with its billing settings (the defaults when it has none) and its last run of each type."""
    return conn.execute(
        sa.text(
            f"""
            SELECT o.id AS organization_id, o.name, o.is_active,
                   coalesce(s.billing_hold, false) AS billing_hold, s.hold_reason, s.proration_method,
                   s.timezone, s.rent_schedule_day, s.rent_schedule_hour, s.utility_schedule_weekday,
                   s.utility_schedule_hour, s.updated_at, s.updated_by,
                   to_jsonb(rent) AS last_rent_run, to_jsonb(utility) AS last_utility_run
            FROM organizations o
            LEFT JOIN {BILLING_SETTINGS_TABLE} s ON s.organization_id = o.id
            {_LAST_RUN.format(name="rent")}
            {_LAST_RUN.format(name="utility")}
            ORDER BY o.name, o.id
            LIMIT :limit
            """
        ),
        {"rent": RunType.MONTHLY_RENT, "utility": RunType.UTILITY, "limit": limit},
    ).all()


def organizations_on_own_schedules(conn: Connection, limit: int = 10000) -> list[sa.Row]:
    """The active organizations with a schedule of their own (rent or utility): name, hold and the five settings."""
    return conn.execute(
        sa.text(
            f"""
            SELECT o.id AS organization_id, o.name, s.billing_hold, s.timezone, s.rent_schedule_day,
                   s.rent_schedule_hour, s.utility_schedule_weekday, s.utility_schedule_hour
            FROM organizations o JOIN {BILLING_SETTINGS_TABLE} s ON s.organization_id = o.id
            WHERE o.is_active AND (s.rent_schedule_day IS NOT NULL OR s.utility_schedule_weekday IS NOT NULL)
            ORDER BY o.id
            LIMIT :limit
            """
        ),
        {"limit": limit},
    ).all()


def default_run_organizations(conn: Connection) -> sa.Row:
    """How many organizations a default run of each type bills now (`rent`, `utility`): the active ones
    without a schedule of their own for that type and not on hold (one on hold gets an on_hold row)."""
    return conn.execute(
        sa.text(
            f"""
            SELECT count(*) FILTER (WHERE s.rent_schedule_day IS NULL) AS rent,
                   count(*) FILTER (WHERE s.utility_schedule_weekday IS NULL) AS utility
            FROM organizations o LEFT JOIN {BILLING_SETTINGS_TABLE} s ON s.organization_id = o.id
            WHERE o.is_active AND NOT coalesce(s.billing_hold, false)
            """
        )
    ).one()
