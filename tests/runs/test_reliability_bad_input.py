"""Catalogue of bad rows and bad parameters: each gets a clear error in the right place (the run's
`errors`, or a refused trigger) and everything valid around it is still billed. Every scenario
ends with the audit."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa

from support.audit import snapshot_finalized
from support.factories import add_charge, add_invoice, add_lease, add_organization, add_statement, invoice_for
from tentman.names import RENT_DAG_ID
from tentman.runs.bill import bill_organization
from tentman.runs.organizations import list_organizations
from tentman.runs.reconcile import reconcile_dag_run
from tentman.runs.record import BillingRunFailed, record_invoice_runs
from tentman.runs.resolve import resolve_billing_period

pytestmark = pytest.mark.reliability

RUN_AFTER = datetime(2026, 2, 26, 2, tzinfo=UTC)  # rent bills March 2026
MARCH = date(2026, 3, 1)
DAG = RENT_DAG_ID


def run_rent(engine, params=None, run_id="r1", *, failing=()):
    """One whole DAG run's steps in-process, the reconciliation last; returns {organization id:
    invoice_runs row}.

    `failing`: the labels of the organizations expected to fail, which fails the run with
    BillingRunFailed naming them; any other exception fails the test. The organizations it completed
    are reconciled all the same, as the DAG's reconcile task does after a failed aggregation."""
    run = resolve_billing_period(
        engine, run_type="monthly_rent", params=params or {}, logical_date=RUN_AFTER, run_after=RUN_AFTER
    )
    orgs = list_organizations(engine, run)
    results = [bill_organization(engine, run, o, dag_id=DAG, dag_run_id=run_id) for o in orgs]
    if failing:
        with pytest.raises(BillingRunFailed) as failed:
            record_invoice_runs(engine, run, orgs, results, dag_id=DAG, dag_run_id=run_id)
        assert failed.value.organizations == list(failing)
    else:
        record_invoice_runs(engine, run, orgs, results, dag_id=DAG, dag_run_id=run_id)
    reconcile_dag_run(engine, dag_id=DAG, dag_run_id=run_id)  # the verdicts the audit is compared with
    with engine.connect() as conn:
        return {
            r.organization_id: r
            for r in conn.execute(sa.text("SELECT * FROM invoice_runs WHERE dag_run_id = :r"), {"r": run_id})
        }


@pytest.fixture
def org_with_good_lease(engine):
    with engine.begin() as conn:
        org = add_organization(conn, "Good & Bad Homes")
        good = add_lease(conn, org, date(2025, 1, 1), None, "1000.00")
    return org, good


def assert_only_error(row, lease_id, message):
    assert row.errors == [{"lease_id": lease_id, "error": message}]
    assert row.failure_count == 1


def assert_good_billed(engine, good, amount="1000.00"):
    with engine.connect() as conn:
        assert invoice_for(conn, good, MARCH).total == Decimal(amount)


def test_negative_rent(engine, org_with_good_lease, audited):
    org, good = org_with_good_lease
    with engine.begin() as conn:
        bad = add_lease(conn, org, date(2025, 1, 1), None, "-1200.00")
    rows = run_rent(engine)
    assert_only_error(rows[org], bad, "monthly_rent -1200.00 is negative")
    assert_good_billed(engine, good)
    audited(engine)


def test_absurd_amounts_beyond_what_an_invoice_can_hold(engine, org_with_good_lease, audited):
    org, good = org_with_good_lease
    with engine.begin() as conn:
        bad = add_lease(conn, org, date(2025, 1, 1), None, "9999999999.99")
        add_charge(conn, bad, "9999999999.99", date(2025, 1, 1))
    rows = run_rent(engine)
    assert_only_error(
        rows[org], bad, "invoice total 19999999999.98 exceeds the largest amount an invoice can hold (9999999999.99)"
    )
    assert_good_billed(engine, good)
    audited(engine)


def test_end_date_before_start_date(engine, org_with_good_lease, audited):
    org, good = org_with_good_lease
    with engine.begin() as conn:
        bad = add_lease(conn, org, date(2026, 3, 20), date(2026, 3, 2), "900.00")
    rows = run_rent(engine)
    assert_only_error(rows[org], bad, "lease end_date 2026-03-02 is before its start_date 2026-03-20")
    assert_good_billed(engine, good)
    audited(engine)


def test_lease_without_start_date(engine, org_with_good_lease, audited):
    org, good = org_with_good_lease
    with engine.begin() as conn:
        bad = add_lease(conn, org, None, None, "900.00")
    rows = run_rent(engine)
    assert_only_error(rows[org], bad, "lease has no start_date")
    assert_good_billed(engine, good)
    audited(engine)


@pytest.mark.parametrize("status", ["Active", "pending", None])
def test_unknown_lease_status(engine, org_with_good_lease, audited, status):
    org, good = org_with_good_lease
    with engine.begin() as conn:
        bad = add_lease(conn, org, date(2025, 1, 1), None, "900.00", status=status)
    rows = run_rent(engine)
    shown = "null" if status is None else f"'{status}'"
    assert_only_error(
        rows[org], bad, f"lease status {shown} is unknown; expected one of draft, active, terminated, ended"
    )
    assert_good_billed(engine, good)
    audited(engine)


def test_leases_with_no_organization_are_reported_and_never_billed(engine, org_with_good_lease, audited, caplog):
    org, good = org_with_good_lease
    with engine.begin() as conn:
        orphan = add_lease(conn, None, date(2025, 1, 1), None, "700.00")
        dangling = add_lease(conn, 987654, date(2025, 1, 1), None, "700.00")
    with caplog.at_level("WARNING", logger="tentman.runs.organizations"):
        rows = run_rent(engine)
    assert set(rows) == {org} and rows[org].errors == []
    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning == [f"2 active leases belong to no known organization and are never billed: {orphan}, {dangling}"]
    with engine.connect() as conn:
        assert invoice_for(conn, orphan, MARCH) is None and invoice_for(conn, dangling, MARCH) is None
    assert_good_billed(engine, good)
    audited(engine)


def test_charge_of_another_organizations_lease_stays_with_that_lease(engine, org_with_good_lease, audited):
    org, good = org_with_good_lease
    with engine.begin() as conn:
        other = add_organization(conn, "Other Org")
        other_lease = add_lease(conn, other, date(2025, 1, 1), None, "500.00")
        charge = add_charge(conn, other_lease, "40.00", date(2025, 1, 1))
    rows = run_rent(engine, {"organization_ids": [org]})
    assert set(rows) == {org} and rows[org].errors == []
    with engine.connect() as conn:
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM invoice_lines WHERE source_id = :c AND line_type = 'recurring_charge'"),
                {"c": charge},
            ).scalar()
            == 0
        )
        assert invoice_for(conn, other_lease, MARCH) is None
    run_rent(engine, {"organization_ids": [other]}, run_id="r2")
    with engine.connect() as conn:
        assert invoice_for(conn, other_lease, MARCH).total == Decimal("540.00")
    assert_good_billed(engine, good)
    audited(engine)


@pytest.mark.parametrize(
    "amount, message",
    [("-15.00", "recurring charge {c} amount -15.00 is negative"), (None, "recurring charge {c} has no amount")],
    ids=["negative charge", "charge without amount"],
)
def test_bad_charge_fails_its_lease_only(engine, org_with_good_lease, audited, amount, message):
    org, good = org_with_good_lease
    with engine.begin() as conn:
        bad = add_lease(conn, org, date(2025, 1, 1), None, "800.00")
        charge = add_charge(conn, bad, amount, date(2025, 1, 1))
    rows = run_rent(engine)
    assert_only_error(rows[org], bad, message.format(c=charge))
    assert_good_billed(engine, good)
    audited(engine)


@pytest.mark.parametrize("case", ["null amount", "inverted period", "missing lease", "lease of another organization"])
def test_bad_utility_statements(engine, org_with_good_lease, audited, case):
    org, good = org_with_good_lease
    with engine.begin() as conn:
        other_lease = add_lease(conn, add_organization(conn, "Other"), date(2025, 1, 1))
        ok = add_statement(conn, org, good, Decimal("25.00"), date(2026, 2, 1), date(2026, 2, 28))
        lease, amount, start, end = {
            "null amount": (good, None, date(2026, 2, 1), date(2026, 2, 28)),
            "inverted period": (good, Decimal("3.00"), date(2026, 2, 28), date(2026, 2, 1)),
            "missing lease": (4242424, Decimal("3.00"), date(2026, 2, 1), date(2026, 2, 28)),
            "lease of another organization": (other_lease, Decimal("3.00"), date(2026, 2, 1), date(2026, 2, 28)),
        }[case]
        bad = add_statement(conn, org, lease, amount, start, end)
    run = resolve_billing_period(
        engine,
        run_type="utility",
        params={"organization_ids": [org]},
        logical_date=datetime(2026, 3, 2, 3, tzinfo=UTC),
        run_after=RUN_AFTER,
    )
    result = bill_organization(engine, run, list_organizations(engine, run)[0], dag_id="u", dag_run_id="u1")
    reconcile_dag_run(engine, dag_id="u", dag_run_id="u1")
    expected = {
        "null amount": f"utility statement {bad} of lease {good} has no amount",
        "inverted period": (
            f"utility statement {bad} of lease {good}: period_end 2026-02-01 is before its period_start 2026-02-28"
        ),
        "missing lease": f"utility statement {bad} names lease 4242424, which does not exist",
        "lease of another organization": (
            f"utility statement {bad} names lease {other_lease}, which belongs to another organization"
        ),
    }[case]
    assert result["errors"] == [{"lease_id": lease, "error": expected}]
    assert result["statements_billed"] == 1
    with engine.connect() as conn:
        pending = (
            conn.execute(sa.text("SELECT id FROM utility_statements WHERE invoice_line_id IS NULL")).scalars().all()
        )
        assert pending == [bad] and ok != bad
    audited(engine)


def test_draft_in_a_currency_that_disagrees_follows_the_organization(engine, org_with_good_lease, audited):
    org, good = org_with_good_lease
    with engine.begin() as conn:
        issued_lease = add_lease(conn, org, date(2025, 1, 1), None, "600.00")
        for lease, status, currency in ((good, "draft", "EUR"), (issued_lease, "issued", "GBP")):
            invoice = add_invoice(
                conn, org, lease, date(2026, 3, 1), date(2026, 3, 31), "600.00", status=status, currency=currency
            )
            conn.execute(
                sa.text(
                    "INSERT INTO invoice_lines (invoice_id, line_type, source_id, description, amount) "
                    "VALUES (:i, 'rent', :l, 'rent', 600.00)"
                ),
                {"i": invoice, "l": lease},
            )
        before = snapshot_finalized(conn)
    rows = run_rent(engine)
    assert (rows[org].success_count, rows[org].skipped_count) == (1, 1)
    with engine.connect() as conn:
        assert invoice_for(conn, good, MARCH).currency == "USD"  # the draft follows the organization
        assert invoice_for(conn, issued_lease, MARCH).currency == "GBP"  # the issued one is never touched
    assert_good_billed(engine, good)
    audited(engine, before=before)


@pytest.mark.parametrize("currency", ["us", "", None, "12$"])
def test_organization_currency_that_is_not_a_currency(engine, audited, currency):
    with engine.begin() as conn:
        bad_org = add_organization(conn, "Bad Currency", currency=currency)
        add_lease(conn, bad_org, date(2025, 1, 1))
        good_org = add_organization(conn, "Fine")
        good = add_lease(conn, good_org, date(2025, 1, 1), None, "1000.00")
    # The organization fails, so the run does; the other is billed all the same.
    rows = run_rent(engine, failing=[f"Bad Currency (#{bad_org})"])
    assert rows[bad_org].status == "failed" and rows[bad_org].errors[0]["lease_id"] is None
    assert "expected a 3-letter upper-case ISO 4217 code such as 'USD'" in rows[bad_org].errors[0]["error"]
    assert rows[good_org].status == "completed"
    assert_good_billed(engine, good)
    audited(engine)


def test_organization_with_no_leases(engine, org_with_good_lease, audited):
    org, good = org_with_good_lease
    with engine.begin() as conn:
        empty = add_organization(conn, "Empty")
    rows = run_rent(engine)
    assert (rows[empty].status, rows[empty].total_leases, rows[empty].errors) == ("completed", 0, [])
    assert_good_billed(engine, good)
    audited(engine)


PARAM_CASES = [
    ({"organization_ids": [999999]}, "organization_ids names organizations that do not exist: [999999]", False),
    ({"billing_month": "2026-13"}, "billing_month '2026-13' is not a valid month", True),
    ({"billing_month": "26-01"}, "billing_month '26-01' is not a valid month", True),
    ({"billing_month": ""}, "billing_month '' is not a valid month", True),
    ({"proration_method": "actualdaysinmonth"}, "proration_method 'actualdaysinmonth' is not supported", True),
    ({"organization_ids": "1,2"}, "organization_ids '1,2' is not valid", True),
]


@pytest.mark.parametrize(
    "params, message, refused_at_trigger",
    PARAM_CASES,
    ids=[next(iter(p)) + "=" + repr(next(iter(p.values()))) for p, _, _ in PARAM_CASES],
)
def test_bad_parameters_are_refused_and_nothing_is_written(
    engine, org_with_good_lease, audited, params, message, refused_at_trigger
):
    with pytest.raises(ValueError) as err:
        resolve_billing_period(
            engine, run_type="monthly_rent", params=params, logical_date=RUN_AFTER, run_after=RUN_AFTER
        )
    assert message in str(err.value)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM invoices")).scalar() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM invoice_runs")).scalar() == 0
    audited(engine)


@pytest.mark.airflow
@pytest.mark.parametrize(
    "params, message, refused_at_trigger",
    [c for c in PARAM_CASES if c[2]],
    ids=[next(iter(p)) + "=" + repr(next(iter(p.values()))) for p, _, r in PARAM_CASES if r],
)
def test_bad_parameters_are_refused_by_the_trigger_form_schema(airflow_home, params, message, refused_at_trigger):
    from airflow.sdk.exceptions import ParamValidationError

    from support.dags import load_dag

    dag_params = copy.deepcopy(load_dag(RENT_DAG_ID).params)
    with pytest.raises(ParamValidationError, match=f"Invalid input for param {next(iter(params))}"):
        dag_params.update(params)  # what a trigger does with its conf: refused before any run exists
        dag_params.validate()
