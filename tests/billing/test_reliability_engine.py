"""Isolation between organizations, hostile text, concurrency and property tests of the engines.

Every scenario ends with the audit (tests/audit.py)."""

from __future__ import annotations

import itertools
import threading
import uuid
from datetime import date, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.audit import snapshot_finalized
from support.factories import add_charge, add_lease, add_organization, invoice_for, lines
from tentman.billing.periods import BillingPeriod
from tentman.billing.proration import prorate
from tentman.billing.rent import generate_rent_invoices
from tentman.billing.utility import generate_utility_invoices
from tentman.names import BILLING_SCHEMA, PRORATE_FUNCTION, ProrationMethod

pytestmark = pytest.mark.reliability

MARCH = BillingPeriod.for_month(2026, 3)
ACTUAL = ProrationMethod.ACTUAL_DAYS_IN_MONTH


def bill_rent(conn_or_engine, org, period=MARCH, method=ACTUAL):
    if isinstance(conn_or_engine, sa.Engine):
        with conn_or_engine.begin() as conn:
            return generate_rent_invoices(
                conn, organization_id=org, period=period, proration_method=method, invoice_run_id=None
            )
    return generate_rent_invoices(
        conn_or_engine, organization_id=org, period=period, proration_method=method, invoice_run_id=None
    )


def _two_orgs(engine, n=20):
    with engine.begin() as conn:
        a, b = add_organization(conn, "A"), add_organization(conn, "B")
        for org in (a, b):
            for i in range(n):
                lease = add_lease(
                    conn,
                    org,
                    date(2025, 1, 1),
                    date(2026, 3, 10 + i % 15) if i % 4 == 0 else None,
                    f"{900 + 17 * i}.00",
                )
                if i % 3 == 0:
                    add_charge(conn, lease, "35.50", date(2026, 3, 5))
                conn.execute(
                    sa.text(
                        """INSERT INTO utility_statements (organization_id, lease_id, utility_type,
                                                       period_start, period_end, amount, status)
                           VALUES (:o, :l, 'gas', '2026-02-01', '2026-02-28', 12.34, 'finalized')"""
                    ),
                    {"o": org, "l": lease},
                )
    return a, b


def test_billing_one_organization_while_anothers_rows_are_locked(engine, audited):
    a, b = _two_orgs(engine)
    bill_rent(engine, b)
    with engine.connect() as locker:
        locker.begin()
        # Organization B's rows are locked by somebody else, as strongly as rows can be.
        for table, where in (
            ("organizations", "id = :b"),
            ("leases", "organization_id = :b"),
            ("invoices", "organization_id = :b"),
            ("utility_statements", "organization_id = :b"),
            ("lease_recurring_charges", "lease_id IN (SELECT id FROM leases WHERE organization_id = :b)"),
        ):
            locker.execute(sa.text(f"SELECT 1 FROM {table} WHERE {where} FOR UPDATE"), {"b": b})
        with engine.begin() as conn:
            conn.execute(sa.text("SET LOCAL lock_timeout = '2s'"))
            result = bill_rent(conn, a)
            generate_utility_invoices(conn, organization_id=a, period=MARCH, invoice_run_id=None)
        assert result.success_count == 20
        locker.rollback()
    audited(engine)


def test_billing_one_organization_while_anothers_data_keeps_changing(engine, audited):
    a, b = _two_orgs(engine)
    stop = threading.Event()

    def churn():
        with engine.connect() as conn:
            n = 0
            while not stop.is_set():
                n += 1
                with conn.begin():
                    conn.execute(
                        sa.text("UPDATE leases SET monthly_rent = monthly_rent + 1 WHERE organization_id = :b"),
                        {"b": b},
                    )
                    conn.execute(
                        sa.text(
                            "INSERT INTO leases (organization_id, start_date, monthly_rent, status) "
                            "VALUES (:b, '2026-01-01', 100 + :n, 'active')"
                        ),
                        {"b": b, "n": n},
                    )

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(5):
            bill_rent(engine, a)
    finally:
        stop.set()
        thread.join()
    bill_rent(engine, b)  # bring B's drafts up to date for the audit
    audited(engine)


def test_every_written_row_belongs_to_the_billed_organization(engine, audited):
    a, b = _two_orgs(engine)
    with engine.begin() as conn:
        before_b = conn.execute(sa.text("SELECT count(*) FROM invoices WHERE organization_id = :b"), {"b": b}).scalar()
        bill_rent(conn, a)
        generate_utility_invoices(conn, organization_id=a, period=MARCH, invoice_run_id=None)
        foreign = conn.execute(
            sa.text(
                """SELECT count(*) FROM invoices i JOIN leases l ON l.id = i.lease_id
               WHERE i.organization_id = :a AND l.organization_id <> :a"""
            ),
            {"a": a},
        ).scalar()
        lines_elsewhere = conn.execute(
            sa.text(
                """SELECT count(*) FROM invoice_lines il JOIN invoices i ON i.id = il.invoice_id
               LEFT JOIN lease_recurring_charges c ON il.line_type = 'recurring_charge' AND c.id = il.source_id
               LEFT JOIN utility_statements s ON il.line_type = 'utility' AND s.id = il.source_id
               WHERE i.organization_id = :a AND (
                   (il.line_type = 'rent' AND il.source_id <> i.lease_id)
                   OR (il.line_type = 'recurring_charge' AND c.lease_id IS DISTINCT FROM i.lease_id)
                   OR (il.line_type = 'utility'
                       AND (s.organization_id IS DISTINCT FROM :a OR s.lease_id IS DISTINCT FROM i.lease_id)))"""
            ),
            {"a": a},
        ).scalar()
        assert (foreign, lines_elsewhere) == (0, 0)
        assert (
            conn.execute(sa.text("SELECT count(*) FROM invoices WHERE organization_id = :b"), {"b": b}).scalar()
            == before_b
            == 0
        )
        assert (
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM utility_statements WHERE organization_id = :b AND invoice_line_id IS NOT NULL"
                ),
                {"b": b},
            ).scalar()
            == 0
        )
    audited(engine)


def test_an_organization_is_billed_under_row_level_security_that_hides_the_others(engine, db_uri, audited):
    """The engine needs nothing outside its organization: run it as a role that sees only that one."""
    a, b = _two_orgs(engine)
    role = f"tentman_only_{a}_{uuid.uuid4().hex[:8]}"  # roles are server-wide: unique, and dropped after
    try:
        _bill_under_rls(engine, a, role)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP OWNED BY {role}")
            conn.exec_driver_sql(f"DROP ROLE {role}")
    audited(engine)


def _bill_under_rls(engine, a: int, role: str) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role}")
        for table in ("organizations", "leases", "invoices", "invoice_runs", "utility_statements"):
            column = "id" if table == "organizations" else "organization_id"
            conn.exec_driver_sql(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
            conn.exec_driver_sql(
                f"CREATE POLICY {role} ON {table} TO {role} USING ({column} = {a}) WITH CHECK ({column} = {a})"
            )
        conn.exec_driver_sql("ALTER TABLE lease_recurring_charges ENABLE ROW LEVEL SECURITY")
        conn.exec_driver_sql(
            f"CREATE POLICY {role} ON lease_recurring_charges TO {role} "
            f"USING (lease_id IN (SELECT id FROM leases WHERE organization_id = {a}))"
        )
        # invoice_lines has no organization column and is reached through invoices only; a policy
        # on it could not see invoices written by the same statement. Its rows are checked by
        # test_every_written_row_belongs_to_the_billed_organization instead.
        conn.exec_driver_sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}")
        conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA {BILLING_SCHEMA} TO {role}")  # the proration function
    with engine.begin() as conn:
        conn.exec_driver_sql(f"SET LOCAL ROLE {role}")
        assert conn.execute(sa.text("SELECT count(DISTINCT organization_id) FROM leases")).scalar() == 1
        result = bill_rent(conn, a)
        utility = generate_utility_invoices(conn, organization_id=a, period=MARCH, invoice_run_id=None)
    assert (result.success_count, result.failure_count, utility.statements_billed) == (20, 0, 20)


HOSTILE = [
    "Robert'); DROP TABLE invoices;--",
    "%s %(org)s :org {0} $1 \\x00",
    'O\'Brien & "Sons" <script>alert(1)</script>',
    "line\nbreak\ttab — ünïcödé 🏠",
    "'; DELETE FROM leases WHERE '1'='1",
]


def test_hostile_names_and_descriptions_are_stored_verbatim(engine, audited):
    with engine.begin() as conn:
        org = add_organization(conn, HOSTILE[0])
        leases = []
        for i, text in enumerate(HOSTILE):
            lease = add_lease(conn, org, date(2025, 1, 1), None, "1000.00", unit=text, tenant=text)
            add_charge(conn, lease, "10.00", date(2025, 1, 1), charge_type=text, description=HOSTILE[-1 - i])
            leases.append(lease)
    result = bill_rent(engine, org)
    assert result.success_count == len(HOSTILE)
    with engine.connect() as conn:
        for i, lease in enumerate(leases):
            got = {line.line_type: line.description for line in lines(conn, invoice_for(conn, lease, MARCH.start).id)}
            assert got["rent"] == f"Rent, unit {HOSTILE[i]}, 2026-03-01 to 2026-03-31"
            assert got["recurring_charge"] == f"{HOSTILE[-1 - i]}, 2026-03-01 to 2026-03-31"
        assert conn.execute(sa.text("SELECT count(*) FROM leases")).scalar() == len(HOSTILE)
        assert conn.execute(sa.text("SELECT name FROM organizations")).scalar() == HOSTILE[0]
    audited(engine)


def test_rent_and_utility_and_dry_runs_side_by_side(engine, audited):
    a, b = _two_orgs(engine, n=40)
    with engine.begin() as conn:
        before = snapshot_finalized(conn)
    errors = []
    barrier = threading.Barrier(6)

    def worker(kind):
        try:
            barrier.wait()
            for org in (a, b):
                with engine.connect() as conn, conn.begin() as tx:
                    if kind == "utility":
                        generate_utility_invoices(conn, organization_id=org, period=MARCH, invoice_run_id=None)
                    else:
                        bill_rent(conn, org)
                    if kind == "dry":
                        tx.rollback()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in ("rent", "rent", "utility", "utility", "dry", "dry")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM invoices WHERE invoice_type = 'utility'")).scalar() == 80
    audited(engine, before=before)


# ---- Properties ------------------------------------------------------------------------------

amounts = st.decimals(min_value=Decimal("0.00"), max_value=Decimal("99999.99"), places=2)
methods = st.sampled_from(list(ProrationMethod))
months = st.tuples(st.integers(2020, 2032), st.integers(1, 12)).map(lambda ym: BillingPeriod.for_month(*ym))


@pytest.mark.unit
@given(amount=amounts, method=methods, period=months, data=st.data())
def test_proration_never_exceeds_the_monthly_amount_and_a_full_month_is_exact(amount, method, period, data):
    days = data.draw(st.integers(1, period.days))
    assert Decimal("0.00") <= prorate(amount, days, period.days, method) <= amount
    assert prorate(amount, period.days, period.days, method) == amount


@pytest.mark.unit
@given(amount=amounts, method=methods, period=months, data=st.data())
def test_pieces_of_a_month_billed_separately_stay_within_the_whole(amount, method, period, data):
    """Split a month in pieces billed separately (e.g. a charge ended and re-added mid-month).

    ActualDaysInMonth: the pieces add up to the whole but for rounding — each piece is rounded
    half-up to the cent on its own (the billing rule), so k pieces can exceed it by at most k
    half-cents (1500.01 over 14 + 14 days of February bills 750.01 twice).
    ThirtyDayMonth and Annual365 cap each line at the monthly amount but count a month as 30 or
    365/12 days: pieces of a 31-day month add up to 31/30 or 372/365 of it. That is the rule as
    specified; the bound below is what it guarantees. NoProration bills each piece whole.
    """
    cuts = sorted(data.draw(st.sets(st.integers(1, period.days - 1), max_size=4)))
    bounds = [0, *cuts, period.days]
    pieces = [prorate(amount, hi - lo, period.days, method) for lo, hi in itertools.pairwise(bounds)]
    rounding = Decimal("0.005") * len(pieces)
    whole = {
        ProrationMethod.ACTUAL_DAYS_IN_MONTH: amount,
        ProrationMethod.THIRTY_DAY_MONTH: max(amount, amount * period.days / 30),
        ProrationMethod.ANNUAL_365: max(amount, amount * 12 * period.days / 365),
        ProrationMethod.NO_PRORATION: amount * len(pieces),
    }[method]
    assert sum(pieces) <= whole + rounding
    if method is ProrationMethod.ACTUAL_DAYS_IN_MONTH:
        assert sum(pieces) >= amount - rounding  # nothing lost either


@pytest.mark.unit
@pytest.mark.parametrize(
    "amount, pieces, expected", [("1500.01", (14, 14), "1500.02"), ("1500.00", (14, 14), "1500.00")]
)
def test_the_half_cent_case_is_what_the_rule_says(amount, pieces, expected):
    feb = BillingPeriod.for_month(2026, 2)
    assert sum(prorate(Decimal(amount), n, feb.days, ACTUAL) for n in pieces) == Decimal(expected)


def reference(amount: Decimal, days: int, period_days: int, method: ProrationMethod) -> Decimal:
    """An independent statement of the rule, with fractions instead of decimals."""
    from fractions import Fraction

    a = Fraction(str(amount))
    if days >= period_days or method is ProrationMethod.NO_PRORATION:
        exact = a
    elif method is ProrationMethod.ACTUAL_DAYS_IN_MONTH:
        exact = a * days / period_days
    elif method is ProrationMethod.THIRTY_DAY_MONTH:
        exact = min(a * days / 30, a)
    else:
        exact = min(a * 12 * days / 365, a)
    cents = exact * 100
    rounded = int(cents) + (1 if cents - int(cents) >= Fraction(1, 2) else 0)
    return Decimal(rounded) / 100


@pytest.mark.unit
@given(amount=amounts, method=methods, period=months, data=st.data())
def test_python_proration_equals_an_independent_reference(amount, method, period, data):
    days = data.draw(st.integers(1, period.days))
    assert prorate(amount, days, period.days, method) == reference(amount, days, period.days, method)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cases=st.lists(st.tuples(amounts, methods, months, st.integers(1, 31)), min_size=1, max_size=40))
def test_sql_and_python_proration_agree_to_the_cent(engine, cases):
    rows = [(a, m, p, min(n, p.days)) for a, m, p, n in cases]
    with engine.connect() as conn:
        got = (
            conn.execute(
                sa.text(
                    f"SELECT {PRORATE_FUNCTION}(a, n, d, m) FROM unnest(CAST(:a AS numeric[]), CAST(:n AS int[]), "
                    "CAST(:d AS int[]), CAST(:m AS text[])) AS t(a, n, d, m)"
                ),
                {
                    "a": [r[0] for r in rows],
                    "n": [r[3] for r in rows],
                    "d": [r[2].days for r in rows],
                    "m": [r[1].value for r in rows],
                },
            )
            .scalars()
            .all()
        )
    assert got == [prorate(a, n, p.days, m) for a, m, p, n in rows]


lease_shapes = st.tuples(
    st.integers(-70, 40),  # start offset in days from the period start
    st.one_of(st.none(), st.integers(-10, 70)),  # end offset, or open-ended
    amounts,
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.integers(-40, 40)),
            st.one_of(st.none(), st.integers(-5, 60)),
            amounts,
            st.booleans(),
        ),
        max_size=3,
    ),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(period=months, method=methods, shapes=st.lists(lease_shapes, min_size=1, max_size=8))
def test_engine_lines_equal_the_reference_for_random_leases(engine, audited, period, method, shapes):
    with engine.begin() as conn:
        org = add_organization(conn, "Property")
        for start, end, rent, charges in shapes:
            lease_start = period.start + timedelta(days=start)
            lease_end = None if end is None else max(lease_start, period.start + timedelta(days=end))
            lease = add_lease(conn, org, lease_start, lease_end, rent)
            for c_start, c_end, amount, active in charges:
                cs = None if c_start is None else period.start + timedelta(days=c_start)
                ce = None if c_end is None else period.start + timedelta(days=c_end)
                if cs and ce and ce < cs:
                    cs, ce = ce, cs
                add_charge(conn, lease, amount, cs, ce, is_active=active)
    with engine.begin() as conn:
        result = generate_rent_invoices(
            conn, organization_id=org, period=period, proration_method=method, invoice_run_id=None
        )
    assert result.failure_count == 0
    audited(engine, default_method=method, organization_ids=[org])
