"""Reconciliation after a run: clean runs pass; each check fails, naming the right ids, when the data is
broken the way real incidents break it (an invoice deleted, a line edited, an issued invoice edited
while the run goes, a statement unlinked, a lease activated mid-run, a run row hand-edited)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

import pytest
import sqlalchemy as sa

from support.agreement import ReconciliationDisagrees, assert_reconciliation_agrees
from support.audit import audit
from support.commands import tentman
from support.factories import add_charge, add_invoice, add_lease, add_organization, add_statement
from support.steps import run_steps
from tentman.billing import reconciliation
from tentman.billing.reconciliation import CHECKS_OF_RUN, reconcile_invoice_run
from tentman.names import RECONCILIATIONS_TABLE, RENT_DAG_ID, RunType
from tentman.runs.bill import bill_organization
from tentman.runs.reconcile import ReconciliationFailed, raise_on_violations, reconcile_period
from tentman.runs.record import record_invoice_runs
from tentman.runs.resolve import resolve_billing_period

RENT_TICK = datetime(2027, 1, 26, 2, tzinfo=UTC)  # bills February 2027
UTILITY_TICK = datetime(2027, 2, 1, 3, tzinfo=UTC)  # bills February 2027


def reconciled_once(test):
    """A test that does not depend on how the runs are grouped for reconciliation (it plans the units
    itself, or reconciles in a process of its own, which the switch below does not reach): run once."""
    test.reconciled_once = True
    return test


def pytest_generate_tests(metafunc):
    ways = ["batched"] if getattr(metafunc.function, "reconciled_once", False) else ["batched", "alone"]
    metafunc.parametrize("reconciled", ways, indirect=True)


@pytest.fixture(autouse=True)
def reconciled(request, monkeypatch) -> str:
    """Every scenario both ways: small organizations in batches (reconcile_invoice_runs), and every
    organization alone, by the statements tuned for one large organization (reconcile_invoice_run)."""
    if request.param == "alone":
        monkeypatch.setattr(reconciliation, "BATCH_RUN_LEASES", -1)
    return request.param


def verdicts(results) -> dict:
    """organization → {failing check: offending ids}."""
    return {r.organization_id: {c.check: c.ids for c in r.violations} for r in results}


@pytest.fixture
def rent_org(engine):
    with engine.begin() as conn:
        org = add_organization(conn, "Checked Homes")
        a = add_lease(conn, org, date(2025, 1, 1), None, "1200.00")
        b = add_lease(conn, org, date(2027, 2, 10), None, "1400.00")
        add_charge(conn, a, "50.00", date(2025, 1, 1))
        bad = add_lease(conn, org, date(2025, 1, 1), None, "-1.00")  # failed, named in the errors
        # January's invoice of lease a, issued before the run.
        issued = add_invoice(conn, org, a, date(2027, 1, 1), date(2027, 1, 31), "1250.00")
        conn.execute(
            sa.text("INSERT INTO invoice_lines (invoice_id, line_type, source_id, description, amount) "
                    "VALUES (:i, 'rent', :l, 'Rent', 1250)"),
            {"i": issued, "l": a},
        )  # fmt: skip
    return org, a, b, bad, issued


def test_a_clean_rent_run_passes_every_check_and_stores_the_verdict(engine, rent_org):
    org, *_ = rent_org
    [result] = run_steps(engine, RunType.MONTHLY_RENT, RENT_TICK, "r1")
    assert result.ok and [c.check for c in result.checks] == list(CHECKS_OF_RUN[RunType.MONTHLY_RENT])
    raise_on_violations(engine, [result])  # nothing to raise
    with engine.connect() as conn:
        stored = conn.execute(sa.text(f"SELECT * FROM {RECONCILIATIONS_TABLE}")).one()
    assert (stored.organization_id, stored.ok, stored.dag_run_id) == (org, True, "r1")
    assert stored.started_xid is not None and stored.ended_xid is not None
    assert {c["check"]: c["ok"] for c in stored.checks} == dict.fromkeys(CHECKS_OF_RUN[RunType.MONTHLY_RENT], True)


def test_an_invoice_deleted_after_the_run_is_a_lost_lease(engine, rent_org):
    org, a, *_ = rent_org

    def delete_a(conn):
        conn.execute(
            sa.text("DELETE FROM invoices WHERE lease_id = :l AND billing_period_start = '2027-02-01'"), {"l": a}
        )

    [result] = run_steps(engine, RunType.MONTHLY_RENT, RENT_TICK, "r1", between=delete_a)
    assert verdicts([result]) == {org: {"rent_coverage": [a], "counts": [result.invoice_run_id]}}
    with pytest.raises(ReconciliationFailed, match=rf"Checked Homes \(#{org}\): rent_coverage: 1 violation \({a}\)"):
        raise_on_violations(engine, [result])


def test_a_line_amount_edited_breaks_the_invoice_total(engine, rent_org):
    org, a, *_ = rent_org
    edited = {}

    def edit_line(conn):
        edited["invoice"] = conn.execute(
            sa.text(
                """
                UPDATE invoice_lines SET amount = amount + 1 WHERE id = (
                    SELECT l.id FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id
                    WHERE i.lease_id = :l AND i.billing_period_start = '2027-02-01' AND l.line_type = 'rent')
                RETURNING invoice_id
                """
            ),
            {"l": a},
        ).scalar_one()

    [result] = run_steps(engine, RunType.MONTHLY_RENT, RENT_TICK, "r1", between=edit_line)
    assert verdicts([result]) == {org: {"totals": [edited["invoice"]]}}


def test_an_issued_invoice_edited_while_the_run_goes_is_caught_and_one_edited_before_is_not(engine, rent_org):
    org, a, b, bad, issued = rent_org
    with engine.begin() as conn:  # before the run: the application's business, not the run's
        conn.execute(sa.text("UPDATE invoices SET due_date = '2027-01-05' WHERE id = :i"), {"i": issued})

    def edit_issued(conn):  # a concurrent writer, with updated_at set back so it looks untouched
        conn.execute(sa.text("UPDATE invoices SET total = 1, updated_at = '2020-01-01' WHERE id = :i"), {"i": issued})

    [clean] = run_steps(engine, RunType.MONTHLY_RENT, RENT_TICK, "r1")
    assert clean.ok
    [result] = run_steps(engine, RunType.MONTHLY_RENT, RENT_TICK, "r2", between=edit_issued)
    assert verdicts([result]) == {org: {"hands_off": [issued]}}


def test_a_line_of_an_issued_invoice_edited_while_the_run_goes_names_its_invoice(engine, rent_org):
    org, a, b, bad, issued = rent_org

    def edit_line(conn):  # the invoice row untouched: only its line was written
        conn.execute(sa.text("UPDATE invoice_lines SET description = 'Rent (edited)' WHERE invoice_id = :i"),
                     {"i": issued})  # fmt: skip

    [result] = run_steps(engine, RunType.MONTHLY_RENT, RENT_TICK, "r1", between=edit_line)
    assert verdicts([result]) == {org: {"hands_off": [issued]}}


def test_an_issued_invoice_and_its_line_both_edited_while_the_run_goes_count_once(engine, rent_org):
    """hands_off finds the invoice through its row and through its line: one violation, not two."""
    org, a, b, bad, issued = rent_org

    def edit_both(conn):
        conn.execute(sa.text("UPDATE invoices SET total = 1 WHERE id = :i"), {"i": issued})
        conn.execute(sa.text("UPDATE invoice_lines SET description = 'Rent (edited)' WHERE invoice_id = :i"),
                     {"i": issued})  # fmt: skip

    [result] = run_steps(engine, RunType.MONTHLY_RENT, RENT_TICK, "r1", between=edit_both)
    assert verdicts([result]) == {org: {"hands_off": [issued]}}
    assert [(c.check, c.violations) for c in result.checks if not c.ok] == [("hands_off", 1)]


def test_a_lease_activated_mid_run_is_billable_but_not_billed(engine, rent_org):
    org, *_ = rent_org
    with engine.begin() as conn:
        late = add_lease(conn, org, date(2025, 1, 1), None, "900.00", status="draft")

    def activate(conn):
        conn.execute(sa.text("UPDATE leases SET status = 'active' WHERE id = :l"), {"l": late})

    [result] = run_steps(engine, RunType.MONTHLY_RENT, RENT_TICK, "r1", between=activate)
    assert verdicts([result])[org]["rent_coverage"] == [late]


def test_a_hand_edited_run_row_does_not_add_up(engine, rent_org):
    org, *_ = rent_org

    def edit_row(conn):
        conn.execute(
            sa.text("UPDATE invoice_runs SET success_count = success_count + 1, total_leases = total_leases + 1")
        )

    [result] = run_steps(engine, RunType.MONTHLY_RENT, RENT_TICK, "r1", between=edit_row)
    assert verdicts([result]) == {org: {"counts": [result.invoice_run_id]}}


@pytest.fixture
def utility_org(engine):
    with engine.begin() as conn:
        org = add_organization(conn, "Metered Homes")
        lease = add_lease(conn, org, date(2025, 1, 1))
        s1 = add_statement(conn, org, lease, "41.17", date(2027, 1, 1), date(2027, 1, 31))
        s2 = add_statement(conn, org, lease, "12.03", date(2027, 1, 1), date(2027, 1, 31), utility_type="gas")
        bad = add_statement(conn, org, lease, None, date(2027, 1, 1), date(2027, 1, 31), utility_type="power")
    return org, lease, s1, s2, bad


def test_a_clean_utility_run_passes_and_an_unlinked_statement_is_caught(engine, utility_org):
    org, lease, s1, s2, bad = utility_org
    [clean] = run_steps(engine, RunType.UTILITY, UTILITY_TICK, "u1")
    assert clean.ok, clean.describe()

    def unlink(conn):
        conn.execute(sa.text("UPDATE utility_statements SET invoice_line_id = NULL WHERE id = :s"), {"s": s1})

    with engine.begin() as conn:
        unlink(conn)
    [result] = reconcile_period(engine, run_type=RunType.UTILITY, period=_february())
    # Its line still bills it (the engine links such a statement back at the next run), so it is
    # not lost; but its invoice line is linked from no statement.
    assert verdicts([result]) == {org: {"utility_coverage": [s1]}}


def test_a_statement_whose_line_was_deleted_is_lost(engine, utility_org):
    org, lease, s1, s2, bad = utility_org

    def delete_line(conn):
        conn.execute(sa.text("UPDATE utility_statements SET invoice_line_id = NULL WHERE id = :s"), {"s": s2})
        conn.execute(sa.text("DELETE FROM invoice_lines WHERE line_type = 'utility' AND source_id = :s"), {"s": s2})

    [result] = run_steps(engine, RunType.UTILITY, UTILITY_TICK, "u1", between=delete_line)
    assert verdicts([result])[org]["utility_coverage"] == [s2]


def test_statements_sharing_a_line_are_named_whoever_the_other_statement_is(engine, utility_org):
    org, lease, s1, s2, bad = utility_org
    [clean] = run_steps(engine, RunType.UTILITY, UTILITY_TICK, "u1")
    assert clean.ok, clean.describe()
    with engine.begin() as conn:
        other_org = add_organization(conn, "Elsewhere")
        stray = add_statement(conn, other_org, add_lease(conn, other_org, date(2025, 1, 1)), "41.17", status="draft")
        # Another organization's draft statement linked to s1's line (a hand-made link): s1 shares its line.
        conn.execute(
            sa.text(
                "UPDATE utility_statements SET invoice_line_id = "
                "(SELECT invoice_line_id FROM utility_statements WHERE id = :s1) WHERE id = :stray"
            ),
            {"s1": s1, "stray": stray},
        )
    [result] = reconcile_period(engine, run_type=RunType.UTILITY, period=_february())
    assert verdicts([result]) == {org: {"utility_coverage": [s1]}}

    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE utility_statements SET invoice_line_id = NULL WHERE id = :s"), {"s": stray})
        # s2 moved onto s1's line: s2 is on a line that does not bill it, s1 shares its line with s2.
        conn.execute(
            sa.text(
                "UPDATE utility_statements SET invoice_line_id = "
                "(SELECT invoice_line_id FROM utility_statements WHERE id = :s1) WHERE id = :s2"
            ),
            {"s1": s1, "s2": s2},
        )
    [result] = reconcile_period(engine, run_type=RunType.UTILITY, period=_february())
    assert verdicts([result]) == {org: {"utility_coverage": sorted([s1, s2])}}


def test_a_utility_line_amount_edited_names_its_statement_and_its_invoice(engine, utility_org):
    org, lease, s1, s2, bad = utility_org
    [clean] = run_steps(engine, RunType.UTILITY, UTILITY_TICK, "u1")
    assert clean.ok, clean.describe()
    with engine.begin() as conn:
        invoice = conn.execute(
            sa.text(
                "UPDATE invoice_lines SET amount = amount + 1 WHERE line_type = 'utility' AND source_id = :s "
                "RETURNING invoice_id"
            ),
            {"s": s2},
        ).scalar_one()
    [result] = reconcile_period(engine, run_type=RunType.UTILITY, period=_february())
    assert verdicts([result]) == {org: {"utility_coverage": [s2], "totals": [invoice]}}


def test_the_merge_planned_passes_leave_the_planner_settings_as_they_were(engine, utility_org):
    # utility_coverage and totals plan their passes as merge joins (enable_nestloop, enable_hashjoin and
    # enable_bitmapscan off for those statements only): the rest of the transaction keeps its own.
    [clean] = run_steps(engine, RunType.UTILITY, UTILITY_TICK, "u1")
    with engine.connect() as conn:
        conn.execute(sa.text("SET LOCAL enable_bitmapscan = off"))  # the caller's own choice, kept
        again = reconcile_invoice_run(conn, clean.invoice_run_id)
        settings = conn.execute(
            sa.text(
                "SELECT current_setting('enable_nestloop'), current_setting('enable_hashjoin'), "
                "current_setting('enable_bitmapscan')"
            )
        ).one()
        conn.rollback()
    assert again.ok, again.describe()
    assert tuple(settings) == ("on", "on", "off")


@pytest.fixture
def statement_stagings(engine):
    """How each utility reconciliation staged the organization's statements: "by link" or "by scan"."""
    seen = []

    def note(conn, cursor, statement, parameters, context, executemany):
        if "CREATE TEMP TABLE tm_recon_statement" in statement:
            seen.append("by link" if "ON s.invoice_line_id = l.id" in statement else "by scan")

    sa.event.listen(engine, "before_cursor_execute", note)
    yield seen
    sa.event.remove(engine, "before_cursor_execute", note)


def _february():
    from tentman.billing.periods import BillingPeriod

    return BillingPeriod.for_month(2027, 2)


def test_utility_reconciliation_reads_its_statements_by_index_not_every_organizations(engine, utility_org, reconciled):
    """The statements a utility run should have billed are staged from the contract's indexes (the
    pending ones) and from the period's lines (the billed ones): a scan of the whole table, once per
    organization, made a 2,000-organization run's reconciliation grow with every statement ever
    written."""
    org, *_ = utility_org
    with engine.begin() as conn:
        other = add_organization(conn, "Many Meters")
        conn.execute(
            sa.text(
                "INSERT INTO utility_statements (organization_id, utility_type, period_start, period_end, amount, "
                "status) SELECT :org, 'water', DATE '2027-01-01', DATE '2027-01-31', 10, 'draft' "
                "FROM generate_series(1, 5000)"
            ),
            {"org": other},
        )
        conn.execute(sa.text("ANALYZE utility_statements"))
    plans = []

    def explain_statement_staging(conn, cursor, statement, parameters, context, executemany):
        if re.search(r"CREATE TEMP TABLE tm_recon_(batch_)?statement\b", statement):
            cursor.execute("EXPLAIN " + statement, parameters)
            plans.append("\n".join(row[0] for row in cursor.fetchall()))

    sa.event.listen(engine, "before_cursor_execute", explain_statement_staging)
    try:
        results = run_steps(engine, RunType.UTILITY, UTILITY_TICK, "u1")
    finally:
        sa.event.remove(engine, "before_cursor_execute", explain_statement_staging)
    assert verdicts(results) == {org: {}, other: {}}
    # Alone, one staging per organization; in a batch, one for both.
    assert len(plans) == (2 if reconciled == "alone" else 1), plans
    assert not [p for p in plans if "Seq Scan on utility_statements" in p], plans


@pytest.mark.parametrize("staging", ["by link", "by scan"])
def test_a_statement_billed_in_an_earlier_month_is_that_months_to_reconcile(
    engine, utility_org, staging, monkeypatch, statement_stagings, reconciled
):
    """A utility run reconciles the statements it should have billed: those still pending, and those
    billed on its period's invoices. One billed on an earlier month's invoice is checked by that month's
    reconciliation (on demand: `tentman runs reconcile`), not by every later run. The same verdicts
    whichever way the organization's statements are staged (by their links, or by one scan of the
    table for an organization that is a large part of it)."""
    org, lease, s1, s2, bad = utility_org
    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE utility_statements"))  # the table's size, which the choice reads
    monkeypatch.setattr(reconciliation, "STATEMENT_PROBE_ROWS", 0 if staging == "by link" else 10**9)
    [january] = run_steps(engine, RunType.UTILITY, datetime(2027, 1, 4, 3, tzinfo=UTC), "u-jan")
    assert january.ok, january.describe()
    with engine.begin() as conn:
        late = add_statement(conn, org, lease, "7.50", date(2027, 1, 1), date(2027, 1, 31), utility_type="trash")
    [february] = run_steps(engine, RunType.UTILITY, UTILITY_TICK, "u-feb")
    assert february.ok, february.describe()
    with engine.begin() as conn:
        invoices = dict(
            conn.execute(
                sa.text(
                    "UPDATE invoice_lines SET amount = amount + 1 WHERE line_type = 'utility' AND source_id = ANY(:s) "
                    "RETURNING source_id, invoice_id"
                ),
                {"s": [s1, late]},
            ).all()
        )
    from tentman.billing.periods import BillingPeriod

    [january_again] = reconcile_period(engine, run_type=RunType.UTILITY, period=BillingPeriod.for_month(2027, 1))
    [february_again] = reconcile_period(engine, run_type=RunType.UTILITY, period=_february())
    assert verdicts([january_again]) == {org: {"utility_coverage": [s1], "totals": [invoices[s1]]}}
    assert verdicts([february_again]) == {org: {"utility_coverage": [late], "totals": [invoices[late]]}}
    # (A batch stages its organizations' statements by index whatever their size.)
    assert set(statement_stagings) == ({staging} if reconciled == "alone" else set())


def test_each_organization_of_a_run_is_reconciled_on_its_own_and_reported_in_order(engine):
    """The organizations are reconciled several transactions at once (RECONCILE_CONNECTIONS), each
    alone or in a batch: every verdict is stored, in organization order, and one organization's
    violation is its own."""
    with engine.begin() as conn:
        orgs = [add_organization(conn, f"Homes {i}") for i in range(7)]
        leases = {org: add_lease(conn, org, date(2025, 1, 1), None, f"{1000 + org}.00") for org in orgs}
    broken = orgs[3]

    def delete_one(conn):
        conn.execute(sa.text("DELETE FROM invoices WHERE lease_id = :l"), {"l": leases[broken]})

    results = run_steps(engine, RunType.MONTHLY_RENT, RENT_TICK, "r1", between=delete_one)
    assert [r.organization_id for r in results] == sorted(orgs)
    assert verdicts(results) == {
        org: ({"rent_coverage": [leases[org]], "counts": [r.invoice_run_id]} if org == broken else {})
        for org, r in zip(sorted(orgs), results, strict=True)
    }
    with engine.connect() as conn:
        stored = dict(conn.execute(sa.text(f"SELECT organization_id, ok FROM {RECONCILIATIONS_TABLE}")).all())
    assert stored == {org: org != broken for org in orgs}


def test_a_rent_run_of_several_organizations_names_each_violation_under_its_own_organization(engine):
    """In a batch every check reads several organizations' rows at once: each violation is its own
    organization's, a lease named in one organization's errors excuses nothing elsewhere."""
    with engine.begin() as conn:
        orgs = [add_organization(conn, f"Batch Homes {i}") for i in range(5)]
        leases = {org: add_lease(conn, org, date(2025, 1, 1), None, "1000.00") for org in orgs}
        add_lease(conn, orgs[3], date(2025, 1, 1), None, "-1.00")  # failed, named in orgs[3]'s errors
        issued = add_invoice(conn, orgs[2], leases[orgs[2]], date(2027, 1, 1), date(2027, 1, 31), "1000.00")
    edited = {}

    def break_three(conn):
        conn.execute(sa.text("DELETE FROM invoices WHERE lease_id = :l"), {"l": leases[orgs[0]]})
        edited["invoice"] = conn.execute(
            sa.text(
                "UPDATE invoice_lines SET amount = amount + 1 WHERE invoice_id = (SELECT id FROM invoices "
                "WHERE lease_id = :l AND billing_period_start = '2027-02-01') RETURNING invoice_id"
            ),
            {"l": leases[orgs[1]]},
        ).scalar_one()
        conn.execute(sa.text("UPDATE invoices SET total = 1 WHERE id = :i"), {"i": issued})

    results = run_steps(engine, RunType.MONTHLY_RENT, RENT_TICK, "r1", between=break_three)
    run_of = {r.organization_id: r.invoice_run_id for r in results}
    assert verdicts(results) == {
        orgs[0]: {"rent_coverage": [leases[orgs[0]]], "counts": [run_of[orgs[0]]]},
        orgs[1]: {"totals": [edited["invoice"]]},
        orgs[2]: {"hands_off": [issued]},
        orgs[3]: {},
        orgs[4]: {},
    }


def test_a_utility_run_of_several_organizations_keeps_each_statement_to_its_organization(engine):
    with engine.begin() as conn:
        orgs = [add_organization(conn, f"Batch Meters {i}") for i in range(3)]
        statements = {}
        for org in orgs:
            lease = add_lease(conn, org, date(2025, 1, 1))
            statements[org] = (
                add_statement(conn, org, lease, "41.17", date(2027, 1, 1), date(2027, 1, 31)),
                add_statement(conn, org, lease, "12.03", date(2027, 1, 1), date(2027, 1, 31), utility_type="gas"),
            )
    [clean, *_] = run_steps(engine, RunType.UTILITY, UTILITY_TICK, "u1")
    assert clean.ok, clean.describe()
    with engine.begin() as conn:
        # orgs[0]: a statement unlinked. orgs[1]: a line's amount edited. orgs[2]'s gas statement moved
        # onto orgs[1]'s water line: that line now bills one statement and carries two.
        conn.execute(sa.text("UPDATE utility_statements SET invoice_line_id = NULL WHERE id = :s"),
                     {"s": statements[orgs[0]][0]})  # fmt: skip
        invoice = conn.execute(
            sa.text(
                "UPDATE invoice_lines SET amount = amount + 1 WHERE line_type = 'utility' AND source_id = :s "
                "RETURNING invoice_id"
            ),
            {"s": statements[orgs[1]][1]},
        ).scalar_one()
        conn.execute(
            sa.text(
                "UPDATE utility_statements SET invoice_line_id = "
                "(SELECT invoice_line_id FROM utility_statements WHERE id = :water) WHERE id = :gas"
            ),
            {"water": statements[orgs[1]][0], "gas": statements[orgs[2]][1]},
        )
    results = reconcile_period(engine, run_type=RunType.UTILITY, period=_february())
    assert verdicts(results) == {
        orgs[0]: {"utility_coverage": [statements[orgs[0]][0]]},
        orgs[1]: {"utility_coverage": sorted(statements[orgs[1]]), "totals": [invoice]},
        # Its statement is on another organization's line, which that organization's check names.
        orgs[2]: {},
    }


@reconciled_once
def test_large_runs_are_reconciled_alone_and_small_ones_in_batches_of_one_period(engine, monkeypatch):
    with engine.begin() as conn:
        orgs = [add_organization(conn, f"Sized Homes {i}") for i in range(6)]
        for org, size in zip(orgs, (1, 3, 1, 2, 1, 1), strict=True):
            for _ in range(size):
                add_lease(conn, org, date(2025, 1, 1), None, "1000.00")
    results = run_steps(engine, RunType.MONTHLY_RENT, RENT_TICK, "r1")
    march = run_steps(engine, RunType.MONTHLY_RENT, datetime(2027, 2, 26, 2, tzinfo=UTC), "r2")
    assert all(r.ok for r in results + march)
    run_of = {r.organization_id: r.invoice_run_id for r in results}
    monkeypatch.setattr(reconciliation, "BATCH_RUN_LEASES", 1)  # orgs 1 and 3 are large
    monkeypatch.setattr(reconciliation, "BATCH_LEASES", 2)  # two one-lease runs per batch
    ids = [run_of[org] for org in orgs] + [march[0].invoice_run_id]  # another period: a batch of its own
    with engine.connect() as conn:
        units = reconciliation.reconciliation_units(conn, ids)
    assert [(u.invoice_run_ids, u.batched) for u in units] == [
        ([run_of[orgs[1]]], False),  # 3 leases, the largest first
        ([run_of[orgs[3]]], False),
        ([run_of[orgs[0]], run_of[orgs[2]]], True),
        ([run_of[orgs[4]], run_of[orgs[5]]], True),
        ([march[0].invoice_run_id], True),
    ]
    with engine.connect() as conn, pytest.raises(ValueError, match="not one batch"):
        reconciliation.reconcile_invoice_runs(conn, [run_of[orgs[0]], march[0].invoice_run_id])


@reconciled_once
def test_the_command_reconciles_on_demand_and_exits_1_on_a_violation(engine, db_uri, rent_org):
    org, a, *_ = rent_org
    run_steps(engine, RunType.MONTHLY_RENT, RENT_TICK, "r1")
    env = {"AIRFLOW_CONN_TENTMAN_DB": db_uri}
    args = ("runs", "reconcile", "--billing-month", "2027-02", "--run-type", "monthly_rent")
    clean = tentman(*args, env_extra=env)
    assert (clean.returncode, clean.stdout) == (0, f"ok   Checked Homes (#{org}) (invoice run 1): ok\n")
    with engine.begin() as conn:  # a manual "fix" in the application that loses an invoice
        conn.execute(sa.text("DELETE FROM invoices WHERE lease_id = :l AND status = 'draft'"), {"l": a})
    broken = tentman(*args, "--organization-id", str(org), env_extra=env)
    assert broken.returncode == 1
    assert broken.stdout.startswith(f"FAIL Checked Homes (#{org}) (invoice run 1): rent_coverage: 1 violation ({a})")
    bad = tentman("runs", "reconcile", "--billing-month", "2027-13", "--run-type", "monthly_rent", env_extra=env)
    assert bad.returncode == 2 and "billing_month '2027-13' is not a valid month" in bad.stderr


def test_the_audit_and_the_reconciliation_agree_on_a_lost_lease(engine, rent_org):
    """The reliability scenarios' cross-check (support.agreement): both see an invoice deleted after
    the run."""
    org, a, *_ = rent_org

    def delete_a(conn):
        conn.execute(
            sa.text("DELETE FROM invoices WHERE lease_id = :l AND billing_period_start = '2027-02-01'"), {"l": a}
        )

    run_steps(engine, RunType.MONTHLY_RENT, RENT_TICK, "r1", between=delete_a)
    with engine.connect() as conn:
        report = audit(conn)
        assert f"lease {a} of organization {org} has no rent invoice for 2027-02 (lost)" in report.anomalies
        verdicts = assert_reconciliation_agrees(conn, report)
    assert verdicts.summary() == "✗ counts, rent_coverage"


def test_a_billed_run_never_reconciled_disagrees_with_a_clean_audit(engine, rent_org):
    org, *_ = rent_org
    run = resolve_billing_period(
        engine, run_type=RunType.MONTHLY_RENT, params={}, logical_date=RENT_TICK, run_after=RENT_TICK
    )
    results = [bill_organization(engine, run, org, dag_id=RENT_DAG_ID, dag_run_id="r1")]
    record_invoice_runs(engine, run, [org], results, dag_id=RENT_DAG_ID, dag_run_id="r1")  # no reconciliation
    with engine.connect() as conn:
        report = audit(conn)
        report.assert_clean()
        with pytest.raises(ReconciliationDisagrees, match=r"have no stored verdict \(never reconciled\)") as err:
            assert_reconciliation_agrees(conn, report, organization_ids=[org])
    assert err.value.verdicts.summary() == "✗ 1 unchecked"
    reconcile_period(engine, run_type=RunType.MONTHLY_RENT, period=run.period)
    with engine.connect() as conn:
        assert assert_reconciliation_agrees(conn, report, organization_ids=[org]).summary() == "✓ 1 run"
