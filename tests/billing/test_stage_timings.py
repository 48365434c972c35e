"""Stage timings: an engine asked for them reports every SQL stage by a stable name, and the
stages add up to the call's own time. Real PostgreSQL, small sizes: the figures are not judged,
only that they are there and account for the call."""

from __future__ import annotations

import time
from datetime import date
from decimal import Decimal

import sqlalchemy as sa

from support.factories import add_lease, add_organization, add_statement
from tentman.billing.periods import BillingPeriod
from tentman.billing.rent import RENT_STAGES, generate_rent_invoices
from tentman.billing.timing import StageTimings
from tentman.billing.utility import UTILITY_STAGES, generate_utility_invoices
from tentman.names import ProrationMethod
from tentman_dev.bench.engines import generate_leases

MAR_2026 = BillingPeriod.for_month(2026, 3)
DEC_2026 = BillingPeriod.for_month(2026, 12)

# Written out: `make bench`'s JSON line carries these names, so renaming one is a visible change.
RENT_STAGE_NAMES = (
    "lock",
    "stage_leases",
    "stage_lines",
    "flag_bad_charges",
    "stage_targets",
    "flag_targets",
    "analyze_targets",
    "stage_line_diff",
    "insert_new",
    "mark_concurrently_created",
    "update_changed",
    "delete_old_lines",
    "upsert_changed_lines",
    "mark_unchanged",
    "link_unchanged",
    "counts",
    "delete_stale_drafts",
)
UTILITY_STAGE_NAMES = (
    "lock",
    "stage_pending",
    "relink_billed",
    "stage_leases",
    "flag_lease_problems",
    "bill_statements",
    "mark_concurrently_issued",
    "recompute_totals",
    "counts",
)


def timed_rent(engine, org) -> tuple[float, StageTimings, object]:
    timings = StageTimings()
    with engine.begin() as conn:
        started = time.perf_counter()
        result = generate_rent_invoices(
            conn,
            organization_id=org,
            period=MAR_2026,
            proration_method=ProrationMethod.ACTUAL_DAYS_IN_MONTH,
            invoice_run_id=None,
            timings=timings,
        )
        total = time.perf_counter() - started
    return total, timings, result


def assert_accounts_for(timings: StageTimings, total: float) -> None:
    assert all(seconds > 0 for seconds in timings.seconds.values()), timings.seconds
    # What no stage covers is Python between statements and the savepoint: a small part.
    assert timings.total <= total
    assert total - timings.total <= 0.2 * total + 0.01, (total, timings.seconds)


def test_rent_engine_reports_every_stage_and_they_add_up_to_its_time(engine):
    with engine.begin() as conn:
        org = add_organization(conn)
        generate_leases(conn, org, 1_000)

    total, timings, result = timed_rent(engine, org)
    assert result.invoices_created == 1_000
    assert RENT_STAGES == RENT_STAGE_NAMES
    assert tuple(timings.seconds) == RENT_STAGE_NAMES
    assert_accounts_for(timings, total)

    total, timings, rerun = timed_rent(engine, org)
    assert rerun.invoices_unchanged == 1_000
    assert tuple(timings.seconds) == RENT_STAGE_NAMES
    assert_accounts_for(timings, total)


def test_rent_stages_add_up_across_the_batches_of_a_bisected_write(engine):
    # One lease's line breaks a constraint the engine knows nothing about: the write stages run
    # once per batch of the bisection, and each name sums its batches.
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE invoice_lines ADD CONSTRAINT test_no_777 CHECK (amount <> 777.77)")
        org = add_organization(conn)
        for i in range(20):
            add_lease(conn, org, date(2025, 1, 1), None, "777.77" if i == 7 else f"{100 + i}.00")

    total, timings, result = timed_rent(engine, org)
    assert (result.success_count, result.failure_count) == (19, 1)
    assert tuple(timings.seconds) == RENT_STAGE_NAMES
    assert timings.total <= total


def test_an_organization_that_cannot_be_billed_reports_its_lock_only(engine):
    with engine.begin() as conn:
        org = add_organization(conn, currency="usd")
    _, timings, result = timed_rent(engine, org)
    assert result.status == "failed"
    assert tuple(timings.seconds) == ("lock",)


def test_utility_engine_reports_every_stage_and_they_add_up_to_its_time(engine):
    with engine.begin() as conn:
        org = add_organization(conn)
        generate_leases(conn, org, 300)
        leases = conn.execute(sa.text("SELECT id FROM leases WHERE organization_id = :o"), {"o": org}).scalars()
        for lease in leases.all():
            add_statement(conn, org, lease, "12.34")
        add_statement(conn, org, lease, None)  # bad: recorded, not billed

    timings = StageTimings()
    with engine.begin() as conn:
        started = time.perf_counter()
        result = generate_utility_invoices(
            conn, organization_id=org, period=DEC_2026, invoice_run_id=None, timings=timings
        )
        total = time.perf_counter() - started
    assert result.statements_billed == 300 and result.amount_billed == Decimal("3702.00")
    assert UTILITY_STAGES == UTILITY_STAGE_NAMES
    assert tuple(timings.seconds) == UTILITY_STAGE_NAMES
    assert_accounts_for(timings, total)
