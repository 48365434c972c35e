"""A preview never holds billing up: a real run ends a preview in its way, a preview gives up on a
run in progress within its lock timeout, at most two previews run at once, and a preview ends at
its deadline."""

from __future__ import annotations

import threading
import time
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa

from support.factories import add_lease, add_organization, invoice_for
from tentman.billing.locking import lock_organization
from tentman.billing.periods import BillingPeriod
from tentman.billing.preview import (
    MAX_CONCURRENT_PREVIEWS,
    PREVIEW_LOCK_TIMEOUT_SECONDS,
    OrganizationBusy,
    PreviewPreempted,
    PreviewRefused,
    PreviewsBusy,
    PreviewTimedOut,
    preview_rent,
    preview_rent_of_organizations,
    preview_slot,
    preview_transaction,
)
from tentman.billing.rent import generate_rent_invoices
from tentman.names import PREVIEW_APPLICATION_NAME, RENT_DAG_ID, InvoiceType, ProrationMethod
from tentman.runs.bill import bill_organization
from tentman.runs.resolve import resolve_billing_period

MARCH = BillingPeriod.for_month(2026, 3)
ACTUAL = ProrationMethod.ACTUAL_DAYS_IN_MONTH
# Far longer than any of these tests: a preview "holds" its lock until a run ends it.
LONG_SECONDS = 600
# What a wait that must end soon is allowed on a loaded 2-core machine before the test calls it hung
# (a real run kept waiting for a preview would wait LONG_SECONDS).
MARGIN_SECONDS = 30


def preview_sessions(engine) -> list[int]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                # This test's database only: under -n 2 another test's previews run beside it.
                sa.text(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = :name AND datname = current_database()"
                ),
                {"name": PREVIEW_APPLICATION_NAME},
            ).scalars()
        )


def end_preview_sessions(engine) -> None:
    """Clean-up after a failure: end what a run should have ended, so the test's threads finish."""
    with engine.connect() as conn:
        conn.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = :name AND datname = current_database()"
            ),
            {"name": PREVIEW_APPLICATION_NAME},
        )


def organization_with_leases(engine) -> tuple[int, list[int]]:
    with engine.begin() as conn:
        org = add_organization(conn)
        leases = [add_lease(conn, org, date(2025, 1, 1), None, rent) for rent in ("1000.00", "1200.00")]
    return org, leases


@pytest.mark.parametrize("preview_is", ["running a statement", "between two statements"])
def test_a_real_run_ends_a_preview_that_holds_the_organizations_lock(engine, preview_is):
    """The real run goes ahead at once, writes its invoices, and the preview is told why it stopped
    (before: the run waited for the preview's transaction to end)."""
    org, leases = organization_with_leases(engine)
    holding, release, outcome = threading.Event(), threading.Event(), {}

    def long_preview():
        try:
            with preview_transaction(engine, org, deadline=time.monotonic() + LONG_SECONDS) as conn:
                outcome["preview"] = preview_rent(conn, organization_id=org, period=MARCH, proration_method=ACTUAL)
                holding.set()
                if preview_is == "running a statement":
                    conn.execute(sa.text("SELECT pg_sleep(:s)"), {"s": LONG_SECONDS})
                else:  # idle in transaction, still holding the lock
                    release.wait(LONG_SECONDS)
                    conn.execute(sa.text("SELECT 1"))
        except PreviewRefused as refusal:
            outcome["refusal"] = refusal

    preview, real_run = threading.Thread(target=long_preview), None
    preview.start()
    try:
        assert holding.wait(MARGIN_SECONDS), "the preview never got the organization's lock"
        assert outcome["preview"]["summary"]["success_count"] == 2
        moment = datetime(2026, 2, 26, 2, tzinfo=UTC)
        run = resolve_billing_period(
            engine, run_type="monthly_rent", params={"organization_ids": [org]}, logical_date=moment, run_after=moment
        )
        results = []
        real_run = threading.Thread(
            target=lambda: results.append(
                bill_organization(engine, run, org, dag_id=RENT_DAG_ID, dag_run_id="during-a-preview")
            )
        )
        real_run.start()
        real_run.join(MARGIN_SECONDS)
        assert not real_run.is_alive(), "the real run waited for the preview"
        release.set()
        preview.join(MARGIN_SECONDS)
        assert not preview.is_alive()
    finally:
        release.set()
        if preview.is_alive() or (real_run and real_run.is_alive()):
            end_preview_sessions(engine)
        preview.join()
    [result] = results
    assert (result["status"], result["invoices_created"]) == ("completed", 2)
    with engine.connect() as conn:
        assert [invoice_for(conn, lease, MARCH.start).total for lease in leases] == [
            Decimal("1000.00"),
            Decimal("1200.00"),
        ]
    refusal = outcome["refusal"]
    assert isinstance(refusal, PreviewPreempted)
    assert str(refusal) == (
        f"the preview of organization {org} was stopped: a real billing run of it started, and real runs take "
        "precedence over previews; try again when the run ends"
    )
    assert preview_sessions(engine) == []


def test_a_preview_gives_up_on_a_run_in_progress_within_its_lock_timeout(engine):
    """A run holding the organization's lock is left alone; the preview says the run is in progress
    (before: the preview waited for the run, up to its 60 s statement timeout)."""
    org, leases = organization_with_leases(engine)
    with engine.connect() as run_conn, run_conn.begin():
        # A real run of the organization in the middle of its transaction.
        generate_rent_invoices(
            run_conn, organization_id=org, period=MARCH, proration_method=ACTUAL, invoice_run_id=None
        )
        outcome = {}

        def preview():
            try:
                preview_rent_of_organizations(engine, [org], period=MARCH, proration_method=ACTUAL)
            except PreviewRefused as refusal:
                outcome["refusal"] = refusal

        started = time.monotonic()
        thread = threading.Thread(target=preview)
        thread.start()
        thread.join(PREVIEW_LOCK_TIMEOUT_SECONDS + MARGIN_SECONDS)
        if thread.is_alive():
            end_preview_sessions(engine)
            thread.join()
            pytest.fail("the preview kept waiting for the run")
        assert time.monotonic() - started >= PREVIEW_LOCK_TIMEOUT_SECONDS  # it did wait that long for the run
        refusal = outcome["refusal"]
        assert isinstance(refusal, OrganizationBusy)
        assert str(refusal) == (
            f"a billing run of organization {org} is in progress (the preview waited {PREVIEW_LOCK_TIMEOUT_SECONDS} s "
            "for it to release the organization's invoices); try again when it ends"
        )
        assert refusal.retry_after_seconds > 0
        run_conn.commit()  # the run's session was not disturbed
    with engine.connect() as conn:
        assert invoice_for(conn, leases[0], MARCH.start).total == Decimal("1000.00")


def test_real_runs_still_take_turns(engine):
    """A run holding the lock is not ended by another run, which waits for it (here: until its lock timeout)."""
    org, _ = organization_with_leases(engine)
    with engine.connect() as first, first.begin():
        lock_organization(first, InvoiceType.RENT, org)
        with pytest.raises(sa.exc.OperationalError, match="lock timeout"):
            with engine.begin() as second:
                second.execute(sa.text("SET LOCAL lock_timeout = '300ms'"))
                generate_rent_invoices(
                    second, organization_id=org, period=MARCH, proration_method=ACTUAL, invoice_run_id=None
                )
        assert first.execute(sa.text("SELECT 1")).scalar() == 1


def test_at_most_two_previews_at_a_time(engine):
    org, _ = organization_with_leases(engine)
    assert MAX_CONCURRENT_PREVIEWS == 2
    with preview_slot(engine) as first, preview_slot(engine) as second:
        assert {first, second} == {1, 2}
        with pytest.raises(PreviewsBusy, match="previews are limited to 2 at a time"):
            preview_rent_of_organizations(engine, [org], period=MARCH, proration_method=ACTUAL)
    # Slots are given back, also by a preview that was refused.
    with preview_slot(engine):
        with pytest.raises(PreviewTimedOut):
            with preview_slot(engine), preview_transaction(engine, org, deadline=time.monotonic()) as conn:
                conn.execute(sa.text("SELECT pg_sleep(5)"))
        [preview] = preview_rent_of_organizations(engine, [org], period=MARCH, proration_method=None)
    assert preview["summary"]["success_count"] == 2


def test_a_preview_ends_at_its_deadline(engine):
    """Every statement of a preview gets what is left of its deadline as its timeout."""
    org, _ = organization_with_leases(engine)
    with pytest.raises(PreviewTimedOut, match=f"time limit of 60 s at organization {org}"):
        with preview_transaction(engine, org, deadline=time.monotonic() + 1) as conn:
            for _ in range(3):  # each would be allowed its 1 s again with one timeout for the transaction
                conn.execute(sa.text("SELECT pg_sleep(0.6)"))
