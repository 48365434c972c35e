"""The utility billing engine against a real PostgreSQL: every finalized statement billed exactly once."""

from __future__ import annotations

import threading
from datetime import date
from decimal import Decimal

import pytest
import sqlalchemy as sa

from support.factories import add_invoice, add_lease, add_organization, add_statement, invoice_for, lines
from support.meanwhile import Meanwhile
from tentman.billing.locking import lock_organization
from tentman.billing.periods import BillingPeriod
from tentman.billing.rent import generate_rent_invoices
from tentman.billing.utility import generate_utility_invoices
from tentman.names import InvoiceType, ProrationMethod

DEC = BillingPeriod.for_month(2026, 12)
JAN = BillingPeriod.for_month(2027, 1)


def bill(engine, org, period=DEC, due_date=None):
    with engine.begin() as conn:
        return generate_utility_invoices(
            conn, organization_id=org, period=period, invoice_run_id=None, due_date=due_date
        )


def statement_line(conn, statement_id):
    return conn.execute(
        sa.text("SELECT invoice_line_id FROM utility_statements WHERE id = :s"), {"s": statement_id}
    ).scalar()


def _application_invoice(conn, org, lease, total, period=DEC, status="draft"):
    """A utility invoice the application wrote itself (no run id), its id."""
    return add_invoice(
        conn,
        org,
        lease,
        period.start,
        period.end,
        total,
        status=status,
        invoice_type=InvoiceType.UTILITY,
        due_date=period.end,
    )


def test_pending_statements_are_billed_onto_one_draft_per_lease(engine):
    with engine.begin() as conn:
        org = add_organization(conn, currency="EUR")
        other = add_organization(conn, "Other")
        lease = add_lease(conn, org, date(2025, 1, 1))
        moved_out = add_lease(conn, org, date(2024, 1, 1), date(2026, 10, 31), status="ended")
        water = add_statement(conn, org, lease, "42.17", utility_type="water")
        power = add_statement(conn, org, lease, "88.40", utility_type="electricity")
        late = add_statement(conn, org, lease, "19.95", date(2026, 9, 1), date(2026, 9, 30))  # finalized late
        current = add_statement(conn, org, lease, "40.00", date(2026, 12, 1), date(2026, 12, 31))
        draft = add_statement(conn, org, lease, "31.00", status="draft")
        future = add_statement(conn, org, lease, "5.00", date(2027, 1, 1), date(2027, 1, 31))
        _old_tenant = add_statement(conn, org, moved_out, "27.30", date(2026, 10, 1), date(2026, 10, 31))
        other_lease = add_lease(conn, other, date(2025, 1, 1))
        foreign = add_statement(conn, other, other_lease, "99.00")

    result = bill(engine, org)
    assert (result.total_leases, result.success_count, result.skipped_count, result.failure_count) == (2, 2, 0, 0)
    assert result.statements_billed == 5 and result.errors == []

    with engine.connect() as conn:
        invoice = invoice_for(conn, lease, DEC.start, "utility")
        got = {line.source_id: line for line in lines(conn, invoice.id)}
        assert set(got) == {water, power, late, current}
        assert got[water].line_type == "utility" and got[water].amount == Decimal("42.17")
        assert got[water].description == "Water, 2026-11-01 to 2026-11-30"
        assert got[power].description == "Electricity, 2026-11-01 to 2026-11-30"
        assert (got[late].service_period_start, got[late].service_period_end) == (date(2026, 9, 1), date(2026, 9, 30))
        # 42.17 + 88.40 + 19.95 + 40.00 = 190.52
        assert invoice.subtotal == invoice.total == Decimal("190.52")
        assert (invoice.status, invoice.currency, invoice.due_date) == ("draft", "EUR", DEC.end)
        assert (invoice.billing_period_start, invoice.billing_period_end) == (DEC.start, DEC.end)
        for statement, line in got.items():
            assert statement_line(conn, statement) == line.id
        assert invoice_for(conn, moved_out, DEC.start, "utility").total == Decimal("27.30")
        for pending in (draft, future, foreign):
            assert statement_line(conn, pending) is None
        assert invoice_for(conn, other_lease, DEC.start, "utility") is None


def test_rerun_adds_only_newly_finalized_statements_to_the_same_draft(engine):
    with engine.begin() as conn:
        org = add_organization(conn)
        lease = add_lease(conn, org, date(2025, 1, 1))
        first = add_statement(conn, org, lease, "10.00")
    bill(engine, org)
    again = bill(engine, org)
    assert (again.total_leases, again.statements_billed) == (0, 0)
    with engine.begin() as conn:
        second = add_statement(conn, org, lease, "2.50", utility_type="gas")
    third = bill(engine, org)
    assert (third.total_leases, third.success_count, third.statements_billed, third.invoices_created) == (1, 1, 1, 0)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM invoices")).scalar() == 1
        invoice = invoice_for(conn, lease, DEC.start, "utility")
        assert sorted(line.source_id for line in lines(conn, invoice.id)) == [first, second]
        assert invoice.total == Decimal("12.50")


def test_issued_invoice_leaves_statements_for_next_month(engine):
    with engine.begin() as conn:
        org = add_organization(conn)
        lease = add_lease(conn, org, date(2025, 1, 1))
        billed = add_statement(conn, org, lease, "10.00")
    bill(engine, org)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE invoices SET status = 'issued' WHERE lease_id = :l"), {"l": lease})
        late = add_statement(conn, org, lease, "7.00", utility_type="gas")
        before = conn.execute(sa.text("SELECT * FROM invoices WHERE lease_id = :l"), {"l": lease}).one()
    result = bill(engine, org)
    assert (result.total_leases, result.success_count, result.skipped_count, result.failure_count) == (1, 0, 1, 0)
    assert result.errors == [
        {
            "lease_id": lease,
            "error": f"utility invoice {before.id} of lease {lease} for 2026-12 is issued; "
            f"its statements {late} stay pending for the next run",
        }
    ]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT * FROM invoices WHERE lease_id = :l"), {"l": lease}).one() == before
        assert statement_line(conn, late) is None
    january = bill(engine, org, JAN)
    assert january.statements_billed == 1
    with engine.connect() as conn:
        jan_invoice = invoice_for(conn, lease, JAN.start, "utility")
        assert [line.source_id for line in lines(conn, jan_invoice.id)] == [late]
        assert jan_invoice.total == Decimal("7.00")
        assert statement_line(conn, billed) is not None


def test_bad_statements_are_recorded_and_left_pending(engine):
    with engine.begin() as conn:
        org = add_organization(conn)
        other = add_organization(conn, "Other")
        lease = add_lease(conn, org, date(2025, 1, 1))
        foreign_lease = add_lease(conn, other, date(2025, 1, 1))
        good = add_statement(conn, org, lease, "20.00")
        credit = add_statement(conn, org, lease, "-5.25", utility_type="electricity")
        no_amount = add_statement(conn, org, lease, None)
        inverted = add_statement(conn, org, lease, "3.00", date(2026, 11, 30), date(2026, 11, 1))
        missing = add_statement(conn, org, 987654, "4.00")
        no_lease = add_statement(conn, org, None, "4.00")
        wrong_org = add_statement(conn, org, foreign_lease, "6.00")
    result = bill(engine, org)
    assert result.errors == [
        {"lease_id": None, "error": f"utility statement {no_lease} names lease null, which does not exist"},
        {"lease_id": lease, "error": f"utility statement {no_amount} of lease {lease} has no amount"},
        {
            "lease_id": lease,
            "error": (
                f"utility statement {inverted} of lease {lease}: "
                "period_end 2026-11-01 is before its period_start 2026-11-30"
            ),
        },
        {
            "lease_id": foreign_lease,
            "error": (
                f"utility statement {wrong_org} names lease {foreign_lease}, which belongs to another organization"
            ),
        },
        {"lease_id": 987654, "error": f"utility statement {missing} names lease 987654, which does not exist"},
    ]
    # Leases with pending statements: lease (billed), 987654, no lease, foreign_lease (failed).
    assert (result.total_leases, result.success_count, result.skipped_count, result.failure_count) == (4, 1, 0, 3)
    with engine.connect() as conn:
        invoice = invoice_for(conn, lease, DEC.start, "utility")
        assert sorted(line.source_id for line in lines(conn, invoice.id)) == [good, credit]
        assert invoice.total == Decimal("14.75")  # 20.00 - 5.25: a credit is billed
        for bad in (no_amount, inverted, missing, no_lease, wrong_org):
            assert statement_line(conn, bad) is None
        assert invoice_for(conn, foreign_lease, DEC.start, "utility") is None


def test_the_database_refuses_a_second_line_for_a_statement(engine):
    with engine.begin() as conn:
        org = add_organization(conn)
        lease = add_lease(conn, org, date(2025, 1, 1))
        statement = add_statement(conn, org, lease)
    bill(engine, org)
    with engine.begin() as conn:
        other_invoice = _application_invoice(conn, org, lease, "0", JAN)
    with pytest.raises(sa.exc.IntegrityError, match="invoice_lines_utility_statement_once"):
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO invoice_lines (invoice_id, line_type, source_id, description, amount) "
                    "VALUES (:i, 'utility', :s, 'again', 1)"
                ),
                {"i": other_invoice, "s": statement},
            )


def bill_meanwhile(engine, org, action):
    meanwhile = Meanwhile("bill_statements", action)
    with engine.begin() as conn:
        result = generate_utility_invoices(
            conn, organization_id=org, period=DEC, invoice_run_id=None, timings=meanwhile
        )
    assert meanwhile.happened
    return result


def test_a_draft_the_application_creates_meanwhile_receives_the_statements(engine):
    """Between staging and writing, the application drafts the utility invoice of one lease: the
    plain INSERT fails on its unique key, and the statement runs again with ON CONFLICT, which adds
    the lease's statements to that draft, exactly as if it had existed when the run began."""
    with engine.begin() as conn:
        org = add_organization(conn)
        lease, other = add_lease(conn, org, date(2025, 1, 1)), add_lease(conn, org, date(2025, 1, 1))
        water, power = (
            add_statement(conn, org, lease, "42.17"),
            add_statement(conn, org, lease, "8.40", utility_type="electricity"),
        )
        add_statement(conn, org, other, "19.95")
    drafted = []

    def application_drafts_one():
        with engine.begin() as app:
            drafted.append(_application_invoice(app, org, lease, "5.00"))

    result = bill_meanwhile(engine, org, application_drafts_one)
    assert (result.success_count, result.statements_billed, result.invoices_created, result.invoices_updated) == (
        2,
        3,
        1,
        1,
    )
    with engine.connect() as conn:
        invoice = invoice_for(conn, lease, DEC.start, "utility")
        assert invoice.id == drafted[0] and invoice.total == Decimal("50.57")
        assert {line.source_id: line.amount for line in lines(conn, invoice.id)} == {
            water: Decimal("42.17"),
            power: Decimal("8.40"),
        }
        assert invoice_for(conn, other, DEC.start, "utility").total == Decimal("19.95")


def test_a_statement_the_application_bills_meanwhile_is_not_billed_again(engine):
    """Between staging and writing, the application bills one statement itself (its line, its link):
    the plain INSERT of lines fails on the once-per-statement index and the statement runs again with
    ON CONFLICT DO NOTHING. The statement stays on the application's line only, and the run's new
    invoice totals the lines it holds, not what was staged."""
    with engine.begin() as conn:
        org = add_organization(conn)
        lease = add_lease(conn, org, date(2025, 1, 1))
        taken, kept = (
            add_statement(conn, org, lease, "42.17"),
            add_statement(conn, org, lease, "8.40", utility_type="gas"),
        )
    app_lines = []

    def application_bills_one():
        with engine.begin() as app:
            invoice = _application_invoice(app, org, lease, "42.17", BillingPeriod.for_month(2026, 11), "issued")
            app_lines.append(
                app.execute(
                    sa.text(
                        "INSERT INTO invoice_lines (invoice_id, line_type, source_id, description, amount) "
                        "VALUES (:i, 'utility', :s, 'billed by the application', 42.17) RETURNING id"
                    ),
                    {"i": invoice, "s": taken},
                ).scalar_one()
            )
            app.execute(
                sa.text("UPDATE utility_statements SET invoice_line_id = :line WHERE id = :s"),
                {"line": app_lines[0], "s": taken},
            )

    result = bill_meanwhile(engine, org, application_bills_one)
    assert (result.success_count, result.statements_billed, result.invoices_created) == (1, 1, 1)
    with engine.connect() as conn:
        invoice = invoice_for(conn, lease, DEC.start, "utility")
        assert [(line.source_id, line.amount) for line in lines(conn, invoice.id)] == [(kept, Decimal("8.40"))]
        assert invoice.subtotal == invoice.total == Decimal("8.40")
        assert (statement_line(conn, taken), statement_line(conn, kept)) == (
            app_lines[0],
            lines(conn, invoice.id)[0].id,
        )
        assert (
            conn.execute(sa.text("SELECT count(*) FROM invoice_lines WHERE source_id = :s"), {"s": taken}).scalar() == 1
        )


def test_a_draft_the_application_issues_meanwhile_keeps_its_statements_pending(engine):
    """Between staging and writing, the application issues the draft a lease's statements were staged
    for: the write's ON CONFLICT DO UPDATE no longer touches it, so the lease is skipped with the reason,
    its statement stays pending and the invoice is left as the application wrote it; the other lease is
    billed as usual."""
    with engine.begin() as conn:
        org = add_organization(conn)
        lease, other = add_lease(conn, org, date(2025, 1, 1)), add_lease(conn, org, date(2025, 1, 1))
        draft = _application_invoice(conn, org, lease, "5.00")
        late = add_statement(conn, org, lease, "42.17")
        billed = add_statement(conn, org, other, "19.95")

    def application_issues_it():
        with engine.begin() as app:
            app.execute(sa.text("UPDATE invoices SET status = 'issued' WHERE id = :i"), {"i": draft})

    result = bill_meanwhile(engine, org, application_issues_it)
    assert (
        result.total_leases,
        result.success_count,
        result.skipped_count,
        result.failure_count,
        result.invoices_created,
        result.invoices_updated,
        result.statements_billed,
    ) == (2, 1, 1, 0, 1, 0, 1)
    assert result.amount_billed == Decimal("19.95")
    assert result.errors == [
        {
            "lease_id": lease,
            "error": f"utility invoice of lease {lease} for 2026-12 was issued while this run was billing it; "
            "its statements stay pending for the next run",
        }
    ]
    with engine.connect() as conn:
        issued = invoice_for(conn, lease, DEC.start, "utility")
        assert (issued.id, issued.status, issued.total) == (draft, "issued", Decimal("5.00"))
        assert lines(conn, draft) == []
        assert statement_line(conn, late) is None and statement_line(conn, billed) is not None


def test_statement_whose_link_was_lost_is_relinked_not_billed_again(engine):
    with engine.begin() as conn:
        org = add_organization(conn)
        lease = add_lease(conn, org, date(2025, 1, 1))
        statement = add_statement(conn, org, lease)
    bill(engine, org)
    with engine.begin() as conn:
        line_id = statement_line(conn, statement)
        conn.execute(sa.text("UPDATE utility_statements SET invoice_line_id = NULL"))
    result = bill(engine, org, JAN)
    assert result.statements_billed == 0 and result.total_leases == 0
    with engine.connect() as conn:
        assert statement_line(conn, statement) == line_id
        assert conn.execute(sa.text("SELECT count(*) FROM invoice_lines")).scalar() == 1


def test_concurrent_runs_bill_each_statement_exactly_once(engine):
    with engine.begin() as conn:
        org = add_organization(conn)
        statements = []
        for i in range(60):
            lease = add_lease(conn, org, date(2025, 1, 1))
            statements += [
                add_statement(conn, org, lease, f"{i}.25"),
                add_statement(conn, org, lease, "1.00", utility_type="gas"),
            ]
    periods = [DEC, DEC, JAN, JAN]  # two runs of the same month, and a "backfill" of the next one
    barrier = threading.Barrier(len(periods))
    errors = []

    def run(period):
        try:
            barrier.wait()
            bill(engine, org, period)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(p,)) for p in periods]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*), count(DISTINCT source_id) FROM invoice_lines")).one() == (
            120,
            120,
        )
        assert (
            conn.execute(sa.text("SELECT count(*) FROM utility_statements WHERE invoice_line_id IS NULL")).scalar() == 0
        )
        # Every invoice total equals its lines; the amounts add up to the statements'.
        assert (
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM invoices i "
                    "WHERE total <> (SELECT sum(amount) FROM invoice_lines WHERE invoice_id = i.id)"
                )
            ).scalar()
            == 0
        )
        assert (
            conn.execute(sa.text("SELECT sum(total) FROM invoices")).scalar()
            == conn.execute(sa.text("SELECT sum(amount) FROM utility_statements")).scalar()
        )


def test_rent_and_utility_billing_do_not_wait_for_each_other(engine):
    with engine.begin() as conn:
        org = add_organization(conn)
        lease = add_lease(conn, org, date(2025, 1, 1))
        add_statement(conn, org, lease, "10.00")
    with engine.connect() as rent_conn, rent_conn.begin():
        # A rent run of this organization is in the middle of its transaction...
        generate_rent_invoices(
            rent_conn,
            organization_id=org,
            period=DEC,
            proration_method=ProrationMethod.ACTUAL_DAYS_IN_MONTH,
            invoice_run_id=None,
        )
        # ...and the utility run of the same organization goes through without waiting.
        with engine.begin() as conn:
            conn.execute(sa.text("SET LOCAL lock_timeout = '3s'"))
            result = generate_utility_invoices(conn, organization_id=org, period=DEC, invoice_run_id=None)
        assert result.statements_billed == 1
        # While a second utility run of the same organization does wait (and times out here).
        with pytest.raises(sa.exc.OperationalError, match="lock timeout"):
            with engine.connect() as holder, holder.begin():
                lock_organization(holder, "utility", org)
                with engine.begin() as conn:
                    conn.execute(sa.text("SET LOCAL lock_timeout = '200ms'"))
                    generate_utility_invoices(conn, organization_id=org, period=DEC, invoice_run_id=None)


def test_due_date_is_configurable(engine):
    with engine.begin() as conn:
        org = add_organization(conn)
        lease = add_lease(conn, org, date(2025, 1, 1))
        add_statement(conn, org, lease)
    bill(engine, org, DEC, due_date=date(2027, 1, 15))
    with engine.connect() as conn:
        assert invoice_for(conn, lease, DEC.start, "utility").due_date == date(2027, 1, 15)


def test_unexpected_error_on_one_lease_is_isolated(engine):
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE invoice_lines ADD CONSTRAINT test_no_6666 CHECK (amount <> 66.66)")
        org = add_organization(conn)
        good = [add_lease(conn, org, date(2025, 1, 1)) for _ in range(7)]
        bad = add_lease(conn, org, date(2025, 1, 1))
        for lease in good:
            add_statement(conn, org, lease, "10.00")
        ok_of_bad = add_statement(conn, org, bad, "1.00")
        rejected = add_statement(conn, org, bad, "66.66")
    result = bill(engine, org)
    assert (result.total_leases, result.success_count, result.failure_count, result.statements_billed) == (8, 7, 1, 7)
    assert result.errors[0]["lease_id"] == bad and "test_no_6666" in result.errors[0]["error"]
    with engine.connect() as conn:
        assert invoice_for(conn, bad, DEC.start, "utility") is None
        assert statement_line(conn, ok_of_bad) is None and statement_line(conn, rejected) is None
        assert conn.execute(sa.text("SELECT count(*) FROM invoices WHERE invoice_type = 'utility'")).scalar() == 7


def test_organization_with_nothing_pending(engine):
    with engine.begin() as conn:
        org = add_organization(conn)
        add_lease(conn, org, date(2025, 1, 1))
    result = bill(engine, org)
    assert (result.status, result.total_leases, result.statements_billed, result.amount_billed) == (
        "completed",
        0,
        0,
        Decimal("0.00"),
    )
