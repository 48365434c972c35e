"""The page's queries on a real database, without Airflow: what a run drafted apart from the period's
other invoices, void ones left out, failed runs counted; each run's reconciliation; the CLI summary's
drafts of the period; what a default run bills and who bills on a schedule of their own."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import sqlalchemy as sa

from support.factories import add_invoice, add_lease, add_organization, set_billing_settings
from support.steps import run_steps
from tentman.billing.periods import BillingPeriod
from tentman.billing.reconciliation import CHECKS, CHECKS_OF_RUN
from tentman.names import RENT_DAG_ID, RunStatus, RunType
from tentman.runs.reconcile import reconcile_period
from tentman.runs.summary import run_summary
from tentman.ui import queries
from tentman.ui.models import RECONCILIATION_IDS, RunReconciliation

NOVEMBER = date(2026, 11, 1)


def add_run(conn, organization_id: int, dag_run_id: str, status: str, started_at: str) -> int:
    return conn.execute(
        sa.text(
            "INSERT INTO invoice_runs (organization_id, run_type, billing_period_start, billing_period_end, status, "
            "errors, dag_id, dag_run_id, started_at, completed_at) "
            "VALUES (:org, 'monthly_rent', '2026-11-01', '2026-11-30', :status, '[]', :dag, :run, "
            "CAST(:started AS timestamptz), CAST(:started AS timestamptz) + interval '3 seconds') RETURNING id"
        ),
        {"org": organization_id, "status": status, "dag": RENT_DAG_ID, "run": dag_run_id, "started": started_at},
    ).scalar_one()


def lease_with_invoice(conn, organization_id: int, status: str, total: str, run_id: int | None) -> None:
    """A lease of its own with its November rent invoice."""
    lease = add_lease(conn, organization_id, date(2025, 1, 1), None, total)
    add_invoice(conn, organization_id, lease, NOVEMBER, date(2026, 11, 30), total, status=status, invoice_run_id=run_id)


def test_a_runs_drafted_invoices_are_the_ones_linked_to_it_and_the_summary_counts_every_draft(engine):
    with engine.begin() as conn:
        org = add_organization(conn, "Harbor View")
        earlier = add_run(conn, org, "r1", "failed", "2026-11-02T02:00:00Z")
        latest = add_run(conn, org, "r2", "completed", "2026-11-03T02:00:00Z")
        lease_with_invoice(conn, org, "draft", "100.00", latest)
        lease_with_invoice(conn, org, "void", "999.00", latest)  # void: counted nowhere
        lease_with_invoice(conn, org, "issued", "50.00", None)
        lease_with_invoice(conn, org, "draft", "20.00", earlier)  # a draft of another run

    with engine.connect() as conn:
        total, rows = queries.list_runs(
            conn, organization_id=org, period_start=NOVEMBER, status=None, run_type=None, limit=10, offset=0
        )
        assert total == 2 and [r.id for r in rows] == [latest, earlier]
        row = rows[0]
        assert (row.drafted_invoices, row.drafted_amount) == (1, Decimal("100.00"))
        assert (row.other_invoices, row.other_amount, sorted(row.other_statuses)) == (
            2,
            Decimal("70.00"),
            ["draft", "issued"],
        )
        assert (row.invoices, row.amount_billed) == (3, Decimal("170.00"))
        assert queries.get_run(conn, earlier).drafted_amount == Decimal("20.00")
        failed = queries.list_runs(
            conn,
            organization_id=None,
            period_start=None,
            status=RunStatus.FAILED,
            run_type=RunType.MONTHLY_RENT,
            limit=10,
            offset=0,
        )
        assert [r.id for r in failed[1]] == [earlier]

        (month,) = queries.failure_rate_per_month(conn, NOVEMBER)
        assert (month.runs, month.failed_runs) == (2, 1)
        (invoiced,) = queries.invoices_per_month(conn, NOVEMBER)
        assert (invoiced.invoices, invoiced.amount) == (3, Decimal("170.00"))

        (settings,) = queries.organizations_with_settings(conn)
        assert (settings.billing_hold, settings.last_rent_run["dag_run_id"], settings.last_utility_run) == (
            False,
            "r2",
            None,
        )

        # `tentman runs summary` of the latest run: every draft of the period, whichever run wrote it.
        (summary,) = run_summary(conn, RENT_DAG_ID)
        assert (summary.dag_run_id, summary.period_drafts, summary.period_draft_total) == (
            "r2",
            2,
            Decimal("120.00"),
        )


def test_the_schedules_queries_count_what_a_default_run_bills_and_list_own_schedules(engine):
    with engine.begin() as conn:
        plain = add_organization(conn, "Plain Rentals")
        held = add_organization(conn, "Held Homes")
        own_rent = add_organization(conn, "Lakeside Lofts")
        own_utility = add_organization(conn, "Shinjuku Heights")
        inactive = add_organization(conn, "Closed Court")
        conn.execute(sa.text("UPDATE organizations SET is_active = false WHERE id = :o"), {"o": inactive})

        set_billing_settings(conn, held, hold=True, reason="dispute")
        set_billing_settings(conn, own_rent, timezone="America/New_York", rent_schedule_day=20, rent_schedule_hour=6)
        set_billing_settings(
            conn, own_utility, timezone="Asia/Tokyo", utility_schedule_weekday=1, utility_schedule_hour=12
        )
        set_billing_settings(conn, inactive, rent_schedule_day=1, rent_schedule_hour=0)

    with engine.connect() as conn:
        counts = queries.default_run_organizations(conn)
        # Rent: Plain and Shinjuku (Held is on hold, Lakeside bills rent on its own, Closed is inactive).
        assert (counts.rent, counts.utility) == (2, 2)  # utility: Plain and Lakeside
        own = queries.organizations_on_own_schedules(conn)
        assert [
            (r.organization_id, r.name, r.timezone, r.rent_schedule_day, r.utility_schedule_weekday) for r in own
        ] == [
            (own_rent, "Lakeside Lofts", "America/New_York", 20, None),
            (own_utility, "Shinjuku Heights", "Asia/Tokyo", None, 1),
        ]
        listed = {r.organization_id: r for r in queries.organizations_with_settings(conn)}
        assert (listed[own_rent].timezone, listed[own_rent].rent_schedule_hour) == ("America/New_York", 6)
        assert listed[plain].utility_schedule_weekday is None


def test_each_run_lists_its_reconciliation_ok_failed_or_none(engine):
    """Verdicts written by the real steps: two clean rent runs, then a draft deleted and the latest run
    reconciled again on demand; a failed run has none."""
    with engine.begin() as conn:
        org = add_organization(conn, "Checked Homes")
        lease = add_lease(conn, org, date(2025, 1, 1), None, "1200.00")
        add_lease(conn, org, date(2025, 1, 1), None, "800.00")
        failed = add_run(conn, org, "r0", "failed", "2026-11-02T02:00:00Z")
    tick = datetime(2027, 1, 26, 2, tzinfo=UTC)  # bills February 2027
    [first] = run_steps(engine, RunType.MONTHLY_RENT, tick, "r1")
    [second] = run_steps(engine, RunType.MONTHLY_RENT, tick, "r2")
    assert first.ok and second.ok
    with engine.begin() as conn:  # a "fix" in the application that loses the lease's invoice
        conn.execute(sa.text("DELETE FROM invoices WHERE lease_id = :l"), {"l": lease})
    [again] = reconcile_period(engine, run_type=RunType.MONTHLY_RENT, period=BillingPeriod.for_month(2027, 2))
    assert again.invoice_run_id == second.invoice_run_id and not again.ok

    with engine.connect() as conn:
        total, rows = queries.list_runs(
            conn, organization_id=org, period_start=None, status=None, run_type=None, limit=10, offset=0
        )
        assert [r.id for r in rows] == [second.invoice_run_id, first.invoice_run_id, failed]
        latest, earlier, none = (RunReconciliation.model_validate(r.reconciliation) if r.reconciliation else None
                                 for r in rows)  # fmt: skip
        assert none is None
        assert earlier.ok and [(c.check, c.ok, c.violations, c.ids) for c in earlier.checks] == [
            (check, True, 0, []) for check in CHECKS_OF_RUN[RunType.MONTHLY_RENT]
        ]
        assert latest.ok is False and latest.checked_at > earlier.checked_at
        assert {c.check: (c.violations, c.ids) for c in latest.checks if not c.ok} == {
            "rent_coverage": (1, [lease]),
            "counts": (1, [second.invoice_run_id]),
        }
        assert queries.get_run(conn, second.invoice_run_id).reconciliation == rows[0].reconciliation
        assert queries.get_run(conn, failed).reconciliation is None
    assert set(RECONCILIATION_IDS) == set(CHECKS)  # the page names every check's ids
