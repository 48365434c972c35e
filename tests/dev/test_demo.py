"""The demo data set of `make demo` (dev/tentman_dev/demo.py) bills as its comments say, lease by lease."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import sqlalchemy as sa

from support.commands import tentman
from tentman.names import RunType
from tentman.runs.bill import bill_organization
from tentman.runs.organizations import list_organizations, organization_labels
from tentman.runs.record import record_invoice_runs
from tentman.runs.resolve import resolve_billing_period
from tentman_dev.demo import load_demo_data


def test_demo_data_bills_as_documented(engine, db_uri):
    with engine.begin() as conn:
        assert load_demo_data(conn) is True
        assert load_demo_data(conn) is False  # loading twice changes nothing
    run = resolve_billing_period(
        engine,
        run_type=RunType.MONTHLY_RENT,
        params={"billing_month": "2026-12"},
        logical_date=None,
        run_after=datetime(2026, 11, 26, 2, tzinfo=UTC),
    )
    orgs = list_organizations(engine, run)
    assert [label.rsplit(" (#", 1)[0] for label in organization_labels(engine, orgs).values()] == [
        "Harbor View Properties",
        "Maple Street Rentals",
        "Cedar Lofts",
    ]
    results = [bill_organization(engine, run, o, dag_id="demo", dag_run_id="r") for o in orgs]
    record_invoice_runs(engine, run, orgs, results, dag_id="demo", dag_run_id="r")
    harbor = results[0]
    assert harbor["errors"] == [{"lease_id": 105, "error": "monthly_rent -50.00 is negative"}]
    assert harbor["skipped_count"] == 1  # lease 106: December already issued
    with engine.connect() as conn:
        totals = dict(
            conn.execute(
                sa.text(
                    "SELECT lease_id, total FROM invoices WHERE billing_period_start = '2026-12-01' AND lease_id < 200"
                )
            ).all()
        )
    # 101: 1500 + parking 75 + pet from Dec 15 (17 days) 25 * 17 / 31 = 13.71
    # 102: moves in Dec 10 (22 days): 1800 * 22 / 31 = 1277.42, storage 40 * 22 / 31 = 28.39
    # 103: moves out Dec 20: 1200 * 20 / 31 = 774.19, parking to Dec 20: 60 * 20 / 31 = 38.71
    # 106: issued invoice kept as it was; 108: Dec 5..18 = 14 days: 2000 * 14 / 31 = 903.23
    assert totals == {
        101: Decimal("1588.71"),
        102: Decimal("1305.81"),
        103: Decimal("812.90"),
        106: Decimal("1650.00"),
        108: Decimal("903.23"),
    }

    out = tentman("runs", "summary", "--dag-id", "demo", env_extra={"AIRFLOW_CONN_TENTMAN_DB": db_uri})
    assert out.returncode == 0, out.stderr
    assert "Harbor View Properties #1" in out.stdout and "completed_with_errors" in out.stdout
    assert "lease 105: monthly_rent -50.00 is negative" in out.stdout


def test_demo_utility_statements_bill_as_documented(engine):
    with engine.begin() as conn:
        load_demo_data(conn)
    run = resolve_billing_period(
        engine,
        run_type="utility",
        params={},
        logical_date=datetime(2026, 12, 7, 3, tzinfo=UTC),
        run_after=datetime(2026, 12, 7, 3, tzinfo=UTC),
    )
    assert run.billing_period_start == "2026-12-01"
    orgs = list_organizations(engine, run)
    results = {o: bill_organization(engine, run, o, dag_id="demo-utility", dag_run_id="r") for o in orgs}
    assert results[1]["statements_billed"] == 6
    assert results[1]["errors"] == [{"lease_id": 106, "error": "utility statement 5006 of lease 106 has no amount"}]
    assert results[2]["errors"] == [
        {"lease_id": None, "error": "utility statement 5007 names lease null, which does not exist"}
    ]
    with engine.connect() as conn:
        totals = dict(
            conn.execute(sa.text("SELECT lease_id, total FROM invoices WHERE invoice_type = 'utility'")).all()
        )
        pending = (
            conn.execute(sa.text("SELECT id FROM utility_statements WHERE invoice_line_id IS NULL ORDER BY id"))
            .scalars()
            .all()
        )
    # 101: water 42.17 + electricity 88.40 + December water 40.00; 102: late October water 19.95;
    # 104: moved-out tenant 27.30; 108: a credit of -12.50.
    assert totals == {101: Decimal("170.57"), 102: Decimal("19.95"), 104: Decimal("27.30"), 108: Decimal("-12.50")}
    assert pending == [5004, 5006, 5007]  # a draft statement, and the two bad ones
