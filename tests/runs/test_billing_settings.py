"""The run steps honour each organization's billing settings: holds and proration methods."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa

from support.factories import add_lease, add_organization, add_statement, invoice_for, set_billing_settings
from tentman.names import RENT_DAG_ID, UTILITY_DAG_ID
from tentman.runs.bill import bill_organization
from tentman.runs.organizations import list_organizations
from tentman.runs.record import record_invoice_runs
from tentman.runs.resolve import resolve_billing_period

HOLD = "dispute over the March statement"


def resolve(engine, params, run_type="monthly_rent"):
    moment = datetime(2026, 2, 26, 2, tzinfo=UTC)  # rent: March 2026; utility: February 2026
    return resolve_billing_period(engine, run_type=run_type, params=params, logical_date=moment, run_after=moment)


def run_all(engine, run, dag_run_id, dag_id=RENT_DAG_ID):
    organizations = list_organizations(engine, run)
    results = [bill_organization(engine, run, o, dag_id=dag_id, dag_run_id=dag_run_id) for o in organizations]
    return results, record_invoice_runs(engine, run, organizations, results, dag_id=dag_id, dag_run_id=dag_run_id)


def set_settings(engine, org, **settings):
    with engine.begin() as conn:
        set_billing_settings(conn, org, **settings)


def invoice_runs(engine, dag_run_id):
    with engine.connect() as conn:
        return {
            r.organization_id: r
            for r in conn.execute(sa.text("SELECT * FROM invoice_runs WHERE dag_run_id = :r"), {"r": dag_run_id})
        }


def draft(engine, lease):
    with engine.connect() as conn:
        return invoice_for(conn, lease, date(2026, 3, 1))


def two_organizations(engine):
    with engine.begin() as conn:
        held = add_organization(conn, "Held Homes")
        other = add_organization(conn, "Other Homes")
        held_lease = add_lease(conn, held, date(2025, 1, 1), None, "1000.00")
        other_lease = add_lease(conn, other, date(2025, 1, 1), None, "2000.00")
    return held, other, held_lease, other_lease


def test_a_run_for_all_organizations_does_not_bill_one_on_hold(engine):
    held, other, held_lease, other_lease = two_organizations(engine)
    run = resolve(engine, {})
    run_all(engine, run, "before-hold")  # the held organization's draft exists from an earlier run
    before = draft(engine, held_lease)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE leases SET monthly_rent = 1111.00"))

    organizations = list_organizations(engine, run)
    set_settings(engine, held, hold=True, reason=HOLD)  # after the listing: the task still honours it
    results = [bill_organization(engine, run, o, dag_id=RENT_DAG_ID, dag_run_id="r1") for o in organizations]
    summary = record_invoice_runs(engine, run, organizations, results, dag_id=RENT_DAG_ID, dag_run_id="r1")

    assert [s["status"] for s in summary] == ["on_hold", "completed"]  # and no BillingRunFailed
    assert results[0]["status"] == "on_hold" and results[0]["errors"] == [
        {"lease_id": None, "error": f"billing hold: {HOLD}"}
    ]
    rows = invoice_runs(engine, "r1")
    row = rows[held]
    assert (row.status, row.total_leases, row.success_count, row.skipped_count, row.failure_count) == (
        "on_hold",
        0,
        0,
        0,
        0,
    )
    assert row.errors == [{"lease_id": None, "error": f"billing hold: {HOLD}"}]
    assert row.completed_at is not None and row.proration_method == "ActualDaysInMonth"
    assert rows[other].status == "completed"
    # The held organization's draft is as it was; the other one's follows the new rent.
    after = draft(engine, held_lease)
    assert (after.total, after.invoice_run_id, after.updated_at) == (
        before.total,
        before.invoice_run_id,
        before.updated_at,
    )
    assert after.total == Decimal("1000.00")
    assert draft(engine, other_lease).total == Decimal("1111.00")


def test_a_run_naming_the_organization_bills_it_with_a_warning(engine, caplog):
    held, other, held_lease, _ = two_organizations(engine)
    set_settings(engine, held, hold=True, reason=HOLD)
    run = resolve(engine, {"organization_ids": [held]})
    with caplog.at_level("WARNING", logger="tentman.runs.bill"):
        results, summary = run_all(engine, run, "r1")
    assert [s["status"] for s in summary] == ["completed"]
    assert draft(engine, held_lease).total == Decimal("1000.00")
    assert invoice_runs(engine, "r1")[held].status == "completed"
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"Held Homes (#{held}) is on billing hold ({HOLD}); billing it because this run names it in organization_ids"
    ]


def test_a_dry_run_reports_the_hold_and_writes_nothing(engine):
    held, other, *_ = two_organizations(engine)
    set_settings(engine, held, hold=True, reason=HOLD)
    results, summary = run_all(engine, resolve(engine, {"dry_run": True}), "r1")
    assert [(s["organization_id"], s["status"]) for s in summary] == [(held, "on_hold"), (other, "completed")]
    assert summary[0]["errors"] == [{"lease_id": None, "error": f"billing hold: {HOLD}"}]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM invoices")).scalar() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM invoice_runs")).scalar() == 0


def test_the_hold_applies_to_utility_billing(engine):
    with engine.begin() as conn:
        held = add_organization(conn, "Held Homes")
        lease = add_lease(conn, held, date(2025, 1, 1))
        statement = add_statement(conn, held, lease, "42.17", date(2026, 1, 1), date(2026, 1, 31))
    set_settings(engine, held, hold=True, reason=HOLD)
    run = resolve(engine, {}, run_type="utility")
    _, summary = run_all(engine, run, "u1", dag_id=UTILITY_DAG_ID)
    assert [s["status"] for s in summary] == ["on_hold"]
    row = invoice_runs(engine, "u1")[held]
    assert (row.run_type, row.status, row.total_leases, row.proration_method) == ("utility", "on_hold", 0, None)
    assert row.errors == [{"lease_id": None, "error": f"billing hold: {HOLD}"}]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM invoices")).scalar() == 0
        pending = conn.execute(
            sa.text("SELECT invoice_line_id FROM utility_statements WHERE id = :s"), {"s": statement}
        )
        assert pending.scalar() is None  # still pending: billed by the first run after the hold
    set_settings(engine, held)  # hold lifted
    _, summary = run_all(engine, run, "u2", dag_id=UTILITY_DAG_ID)
    assert [s["status"] for s in summary] == ["completed"]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT total FROM invoices")).scalar() == Decimal("42.17")


def test_a_rerun_task_after_the_hold_turns_its_row_on_hold_and_the_record_step_keeps_it(engine):
    held, other, held_lease, _ = two_organizations(engine)
    run = resolve(engine, {})
    organizations = list_organizations(engine, run)
    first = bill_organization(engine, run, held, dag_id=RENT_DAG_ID, dag_run_id="r1")
    set_settings(engine, held, hold=True, reason=HOLD)
    again = bill_organization(engine, run, held, dag_id=RENT_DAG_ID, dag_run_id="r1")  # a cleared task
    assert again["invoice_run_id"] == first["invoice_run_id"]
    other_result = bill_organization(engine, run, other, dag_id=RENT_DAG_ID, dag_run_id="r1")
    record_invoice_runs(engine, run, organizations, [again, other_result], dag_id=RENT_DAG_ID, dag_run_id="r1")
    rows = invoice_runs(engine, "r1")
    assert (rows[held].status, rows[held].success_count) == ("on_hold", 0)
    assert draft(engine, held_lease).total == Decimal("1000.00")  # the first attempt's draft stays


# A lease starting Mar 16: 16 of March's 31 days, on 3,100.00 a month.
PRORATED = {
    "ActualDaysInMonth": Decimal("1600.00"),  # 3100 * 16 / 31
    "ThirtyDayMonth": Decimal("1653.33"),  # 3100 * 16 / 30
    "Annual365": Decimal("1630.68"),  # 3100 * 12 * 16 / 365 = 1630.684…
    "NoProration": Decimal("3100.00"),
}


@pytest.mark.parametrize(
    "params, expected",
    [
        # No method in the run: each organization's own, else ActualDaysInMonth.
        ({}, {"own": "ThirtyDayMonth", "none": "ActualDaysInMonth"}),
        # The run's method wins over the organization's.
        ({"proration_method": "Annual365"}, {"own": "Annual365", "none": "Annual365"}),
        ({"proration_method": "ActualDaysInMonth"}, {"own": "ActualDaysInMonth", "none": "ActualDaysInMonth"}),
        ({"proration_method": None}, {"own": "ThirtyDayMonth", "none": "ActualDaysInMonth"}),
    ],
)
def test_proration_method_precedence(engine, params, expected):
    with engine.begin() as conn:
        own = add_organization(conn, "Own Method")
        none = add_organization(conn, "No Settings")
        leases = {
            "own": add_lease(conn, own, date(2026, 3, 16), None, "3100.00"),
            "none": add_lease(conn, none, date(2026, 3, 16), None, "3100.00"),
        }
    set_settings(engine, own, proration_method="ThirtyDayMonth")
    run = resolve(engine, params)
    assert run.proration_method == params.get("proration_method")
    results, _ = run_all(engine, run, "r1")
    rows = invoice_runs(engine, "r1")
    organization = {"own": own, "none": none}
    for key, method in expected.items():
        assert draft(engine, leases[key]).total == PRORATED[method], key
        assert rows[organization[key]].proration_method == method, key
    assert [r["proration_method"] for r in results] == [expected["own"], expected["none"]]


def test_the_documented_backfill_bills_the_organizations_it_names_through_a_hold(engine):
    """docs/operations.md "Backfill a range": its example names organizations, so it bills them even
    on hold, and without organization_ids it would skip them: what the text under it says."""
    import json
    import shlex

    from tentman_dev.local import REPO_ROOT

    operations = (REPO_ROOT / "docs" / "operations.md").read_text()
    section = operations.split("\n## Backfill a range\n", 1)[1].split("\n## ", 1)[0]
    first_command = section.split("```bash\n", 1)[1].split("\n#", 1)[0].replace("\\\n", " ")
    args = shlex.split(first_command)
    conf = json.loads(args[args.index("--dag-run-conf") + 1])
    assert conf["organization_ids"] == [1, 2]
    text = " ".join(section.split())
    assert "a backfill without `organization_ids` skips the organizations on hold" in text
    assert "The example names organizations 1 and 2, so it bills them through a hold" in text

    held, other, held_lease, other_lease = two_organizations(engine)
    set_settings(engine, held, hold=True, reason=HOLD)
    _, named = run_all(engine, resolve(engine, {**conf, "organization_ids": [held, other]}), "backfill-named")
    assert [s["status"] for s in named] == ["completed", "completed"]
    without = {k: v for k, v in conf.items() if k != "organization_ids"}
    _, everyone = run_all(engine, resolve(engine, without), "backfill-all")
    assert [(s["organization_id"], s["status"]) for s in everyone] == [(held, "on_hold"), (other, "completed")]
