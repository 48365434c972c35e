"""The steps of a DAG run (resolve, list, bill one organization, record runs), without Airflow."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa

from support.databases import create_database, drop_database
from support.factories import add_lease, add_organization, inject_invoice_fault, invoice_for
from tentman.billing.periods import BillingPeriod, rent_period_for_run, utility_period_for_run
from tentman.db import create_engine_from_uri
from tentman.migrate import SchemaNotReady, head_revision, upgrade
from tentman.names import RENT_DAG_ID
from tentman.runs.bill import bill_organization
from tentman.runs.organizations import list_organizations, organization_labels
from tentman.runs.record import BillingRunFailed, record_invoice_runs
from tentman.runs.resolve import resolve_billing_period
from tentman_dev.local import with_database

UTC = UTC
DAG = RENT_DAG_ID


def utc(*args):
    return datetime(*args, tzinfo=UTC)


@pytest.mark.unit
@pytest.mark.parametrize(
    "moment, expected",
    [
        (utc(2026, 1, 26, 2), (date(2026, 2, 1), date(2026, 2, 28))),
        (utc(2026, 12, 26, 2), (date(2027, 1, 1), date(2027, 1, 31))),
        (utc(2028, 1, 26, 2), (date(2028, 2, 1), date(2028, 2, 29))),
        # 23:30 on Jan 31 in UTC-5 is Feb 1 in UTC: periods are UTC.
        (datetime(2026, 1, 31, 23, 30, tzinfo=timezone(timedelta(hours=-5))), (date(2026, 3, 1), date(2026, 3, 31))),
    ],
)
def test_rent_bills_the_month_after_the_run(moment, expected):
    period = rent_period_for_run(moment)
    assert (period.start, period.end) == expected


@pytest.mark.unit
def test_utility_bills_the_month_of_the_run():
    assert utility_period_for_run(utc(2026, 12, 7, 3)) == BillingPeriod(date(2026, 12, 1), date(2026, 12, 31))


@pytest.mark.unit
@pytest.mark.parametrize("bad", ["2026-13", "26-01", "", "2026-1", "2026-00", "2026/02", " 2026-02", 202602])
def test_bad_billing_month_is_named(bad):
    with pytest.raises(ValueError) as err:
        BillingPeriod.parse(bad)
    assert repr(bad) in str(err.value)
    assert "YYYY-MM" in str(err.value)


def resolve(engine, params, logical_date=utc(2026, 2, 26, 2), run_type="monthly_rent"):
    return resolve_billing_period(
        engine, run_type=run_type, params=params, logical_date=logical_date, run_after=utc(2026, 2, 26, 2)
    )


def test_resolve_from_logical_date_and_from_run_after(engine):
    run = resolve(engine, {})
    assert (run.billing_period_start, run.billing_period_end) == ("2026-03-01", "2026-03-31")
    # No method of its own: each organization is billed with its own, else ActualDaysInMonth.
    assert run.proration_method is None and run.dry_run is False and run.organization_ids is None
    # A manual run has no logical date: its run_after decides.
    manual = resolve_billing_period(
        engine, run_type="monthly_rent", params={}, logical_date=None, run_after=utc(2026, 5, 3)
    )
    assert manual.billing_period_start == "2026-06-01"
    explicit = resolve(engine, {"billing_month": "2028-02", "proration_method": "Annual365", "dry_run": True})
    assert (explicit.billing_period_start, explicit.billing_period_end) == ("2028-02-01", "2028-02-29")
    assert explicit.proration_method == "Annual365" and explicit.dry_run is True


@pytest.mark.parametrize(
    "params, message",
    [
        ({"billing_month": "2026-13"}, "billing_month '2026-13' is not a valid month"),
        (
            {"proration_method": "actualdaysinmonth"},
            (
                "proration_method 'actualdaysinmonth' is not supported; "
                "expected one of ActualDaysInMonth, ThirtyDayMonth, Annual365, NoProration"
            ),
        ),
        ({"organization_ids": []}, "organization_ids [] is not valid"),
        ({"organization_ids": ["x"]}, "organization_ids contains 'x'"),
        ({"organization_ids": [999]}, "organization_ids names organizations that do not exist: [999]"),
        ({"dry_run": "yes"}, "dry_run 'yes' is not valid; expected true or false"),
    ],
)
def test_bad_params_fail_with_a_message_naming_the_value(engine, params, message):
    with pytest.raises(ValueError) as err:
        resolve(engine, params)
    assert message in str(err.value)


def test_inactive_organization_is_refused_and_not_listed(engine):
    with engine.begin() as conn:
        active = add_organization(conn, "Active")
        inactive = add_organization(conn, "Dormant", is_active=False)
    with pytest.raises(ValueError, match=rf"inactive organizations: \[{inactive}\]"):
        resolve(engine, {"organization_ids": [active, inactive]})
    run = resolve(engine, {})
    assert list_organizations(engine, run) == [active]
    only = resolve(engine, {"organization_ids": [active]})
    assert list_organizations(engine, only) == [active]
    assert organization_labels(engine, [active, inactive, 999_999]) == {
        active: f"Active (#{active})",
        inactive: f"Dormant (#{inactive})",
        999_999: "organization (#999999)",  # no longer in the table
    }


def _setup_two_orgs(engine):
    with engine.begin() as conn:
        a = add_organization(conn, "A")
        b = add_organization(conn, "B")
        la = add_lease(conn, a, date(2025, 1, 1), None, "1000.00")
        bad = add_lease(conn, a, date(2025, 1, 1), None, "-1.00")
        lb = add_lease(conn, b, date(2026, 3, 16), None, "3100.00")
    return a, b, la, bad, lb


def test_dry_run_computes_everything_and_writes_nothing(engine):
    a, b, la, bad, lb = _setup_two_orgs(engine)
    run = resolve(engine, {"dry_run": True})
    orgs = list_organizations(engine, run)
    results = [bill_organization(engine, run, o, dag_id=DAG, dag_run_id="r1") for o in orgs]
    assert results[0]["success_count"] == 1 and results[0]["failure_count"] == 1
    assert results[0]["invoices_created"] == 1 and results[0]["amount_billed"] == "1000.00"
    # Mar 16..31 = 16 days: 3100 * 16 / 31 = 1600.00
    assert results[1]["amount_billed"] == "1600.00"
    summary = record_invoice_runs(engine, run, orgs, results, dag_id=DAG, dag_run_id="r1")
    assert [s["status"] for s in summary] == ["completed_with_errors", "completed"]
    with engine.connect() as conn:
        for table in ("invoices", "invoice_lines", "invoice_runs"):
            assert conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar() == 0


def test_one_invoice_run_row_per_organization_and_rerun_updates_it(engine):
    a, b, la, bad, lb = _setup_two_orgs(engine)
    run = resolve(engine, {})
    orgs = list_organizations(engine, run)
    for _attempt in range(2):
        results = [bill_organization(engine, run, o, dag_id=DAG, dag_run_id="r1") for o in orgs]
        record_invoice_runs(engine, run, orgs, results, dag_id=DAG, dag_run_id="r1")
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM invoice_runs ORDER BY organization_id")).all()
        assert [
            (r.organization_id, r.run_type, r.status, r.total_leases, r.success_count, r.skipped_count, r.failure_count)
            for r in rows
        ] == [(a, "monthly_rent", "completed_with_errors", 2, 1, 0, 1), (b, "monthly_rent", "completed", 1, 1, 0, 0)]
        assert rows[0].errors == [{"lease_id": bad, "error": "monthly_rent -1.00 is negative"}]
        assert rows[0].billing_period_start == date(2026, 3, 1) and rows[0].proration_method == "ActualDaysInMonth"
        assert rows[0].dag_id == DAG and rows[0].dag_run_id == "r1" and rows[0].completed_at is not None
        assert invoice_for(conn, la, date(2026, 3, 1)).invoice_run_id == rows[0].id
        assert invoice_for(conn, lb, date(2026, 3, 1)).total == Decimal("1600.00")
        assert conn.execute(sa.text("SELECT count(*) FROM invoices")).scalar() == 2


def test_failed_organization_gets_a_failed_row_and_fails_the_run(engine):
    a, b, la, bad, lb = _setup_two_orgs(engine)
    run = resolve(engine, {})
    orgs = list_organizations(engine, run)
    # Organization B's task fails mid-way: a database error while writing its invoices.
    with engine.begin() as conn:
        inject_invoice_fault(conn, b)
    ok = bill_organization(engine, run, orgs[0], dag_id=DAG, dag_run_id="r1")
    with pytest.raises(sa.exc.DBAPIError, match="injected fault"):
        bill_organization(engine, run, orgs[1], dag_id=DAG, dag_run_id="r1")
    with pytest.raises(BillingRunFailed) as err:
        record_invoice_runs(engine, run, orgs, [ok], dag_id=DAG, dag_run_id="r1")
    assert "failed for 1 of 2 organizations" in str(err.value) and f"B (#{b})" in str(err.value)
    assert "injected fault" in str(err.value)
    with engine.connect() as conn:
        rows = {r.organization_id: r for r in conn.execute(sa.text("SELECT * FROM invoice_runs"))}
        assert rows[a].status == "completed_with_errors"
        assert rows[b].status == "failed" and rows[b].completed_at is not None
        assert "injected fault" in rows[b].errors[0]["error"] and rows[b].errors[0]["lease_id"] is None
        # Nothing of organization B was written; A's invoice is there.
        assert conn.execute(sa.text("SELECT count(*) FROM invoices WHERE organization_id = :b"), {"b": b}).scalar() == 0
        assert invoice_for(conn, la, date(2026, 3, 1)) is not None


def test_aggregation_fails_the_run_when_an_upstream_task_failed(engine):
    with pytest.raises(BillingRunFailed, match="billing period could not be resolved"):
        record_invoice_runs(engine, None, None, [], dag_id=DAG, dag_run_id="r1")
    run = resolve(engine, {})
    with pytest.raises(BillingRunFailed, match="organizations could not be listed"):
        record_invoice_runs(engine, run, None, [], dag_id=DAG, dag_run_id="r1")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM invoice_runs")).scalar() == 0


def test_organization_task_that_never_finished_is_marked_failed(engine):
    # A task killed between opening its row and committing leaves the row 'running'.
    a, b, la, bad, lb = _setup_two_orgs(engine)
    run = resolve(engine, {})
    orgs = list_organizations(engine, run)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                """INSERT INTO invoice_runs (organization_id, run_type, billing_period_start, billing_period_end,
                                            status, dag_id, dag_run_id)
               VALUES (:a, 'monthly_rent', '2026-03-01', '2026-03-31', 'running', :dag, 'r1')"""
            ),
            {"a": a, "dag": DAG},
        )
    ok = bill_organization(engine, run, orgs[1], dag_id=DAG, dag_run_id="r1")
    with pytest.raises(BillingRunFailed):
        record_invoice_runs(engine, run, orgs, [ok], dag_id=DAG, dag_run_id="r1")
    with engine.connect() as conn:
        statuses = dict(conn.execute(sa.text("SELECT organization_id, status FROM invoice_runs")).all())
    assert statuses == {a: "failed", b: "completed"}


def test_scheduled_run_starting_late_logs_a_warning_naming_both_dates(engine, caplog):
    logical = utc(2026, 1, 26, 2)
    with caplog.at_level("WARNING", logger="tentman.runs.resolve"):
        run = resolve_billing_period(
            engine,
            run_type="monthly_rent",
            params={},
            logical_date=logical,
            run_after=logical,
            scheduled=True,
            started_at=utc(2026, 1, 29, 8),
        )
    assert run.billing_period_start == "2026-02-01"  # still the month of the logical date
    (record,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "2026-01-29T08:00:00+00:00" in record.getMessage() and "2026-01-26T02:00:00+00:00" in record.getMessage()
    caplog.clear()
    with caplog.at_level("WARNING", logger="tentman.runs.resolve"):
        resolve_billing_period(
            engine,
            run_type="monthly_rent",
            params={},
            logical_date=logical,
            run_after=logical,
            scheduled=True,
            started_at=utc(2026, 1, 26, 2, 5),
        )
    assert [r for r in caplog.records if r.levelname == "WARNING"] == []


def test_a_schema_behind_the_bundle_is_named_before_anything_is_billed(pg_admin_uri):
    name = create_database(pg_admin_uri, "tentman_unmigrated")
    engine = create_engine_from_uri(with_database(pg_admin_uri, name))
    head = head_revision()
    try:
        with pytest.raises(SchemaNotReady) as err:
            resolve(engine, {})
        assert str(err.value) == (
            "the TentMan database's billing schema (tentman_billing) is at revision none (never migrated), and "
            f"this bundle needs revision {head}: run `tentman db upgrade` against that database (the tentman_db "
            "connection), then run the DAG again"
        )
        upgrade(engine, with_application_tables=True)
        assert resolve(engine, {}).billing_period_start == "2026-03-01"
    finally:
        engine.dispose()
        drop_database(pg_admin_uri, name)


def test_application_tables_without_what_billing_relies_on_are_named_before_anything_is_billed(engine, caplog):
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE invoices DROP CONSTRAINT invoices_one_per_lease_type_period")
        conn.exec_driver_sql("DROP INDEX leases_organization_status_idx")
    with pytest.raises(SchemaNotReady) as err:
        resolve(engine, {})
    assert "missing unique key invoices_one_per_lease_type_period on invoices" in str(err.value)
    assert "ALTER TABLE invoices ADD CONSTRAINT invoices_one_per_lease_type_period UNIQUE" in str(err.value)
    # A missing index only slows billing: the run goes on, and its log says what to create.
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "ALTER TABLE invoices ADD CONSTRAINT invoices_one_per_lease_type_period "
            "UNIQUE (lease_id, invoice_type, billing_period_start)"
        )
    with caplog.at_level("WARNING", logger="tentman"):
        assert resolve(engine, {}).billing_period_start == "2026-03-01"
    assert any(
        "missing index leases_organization_status_idx" in r.getMessage()
        and "CREATE INDEX CONCURRENTLY leases_organization_status_idx" in r.getMessage()
        for r in caplog.records
    )
