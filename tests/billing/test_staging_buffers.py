"""The engines stage in temporary tables: they raise the session's temporary buffers first, where
PostgreSQL still allows it, and bill the same either way."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import sqlalchemy as sa

from support.factories import add_lease, add_organization, add_statement
from tentman.billing.periods import BillingPeriod
from tentman.billing.rent import generate_rent_invoices
from tentman.billing.staging import STAGING_STATISTICS_TARGET, STAGING_TEMP_BUFFERS, use_staging_settings
from tentman.billing.utility import generate_utility_invoices
from tentman.names import ProrationMethod

MARCH = BillingPeriod.for_month(2026, 3)


def _organization_with_a_lease(conn) -> int:
    org = add_organization(conn, "Buffers")
    lease = add_lease(conn, org, date(2025, 1, 1), rent="1200.00")
    add_statement(conn, org, lease, "31.40", date(2026, 2, 1), date(2026, 2, 28))
    return org


def _bill(conn, org):
    rent = generate_rent_invoices(
        conn,
        organization_id=org,
        period=MARCH,
        proration_method=ProrationMethod.ACTUAL_DAYS_IN_MONTH,
        invoice_run_id=None,
    )
    utility = generate_utility_invoices(conn, organization_id=org, period=MARCH, invoice_run_id=None)
    return rent, utility


def test_a_fresh_session_stages_with_the_larger_temporary_buffers(engine):
    with engine.begin() as conn:
        org = _organization_with_a_lease(conn)
    engine.dispose()  # a session that has not used a temporary table yet
    with engine.begin() as conn:
        rent, utility = _bill(conn, org)
        assert conn.execute(sa.text("SHOW temp_buffers")).scalar_one() == STAGING_TEMP_BUFFERS
    assert (rent.invoices_created, rent.amount_billed) == (1, Decimal("1200.00"))
    assert (utility.statements_billed, utility.amount_billed) == (1, Decimal("31.40"))
    with engine.begin() as conn:  # the session keeps them: the next call bills the same
        assert conn.execute(sa.text("SHOW temp_buffers")).scalar_one() == STAGING_TEMP_BUFFERS
        again, _ = _bill(conn, org)
        assert conn.execute(sa.text("SHOW temp_buffers")).scalar_one() == STAGING_TEMP_BUFFERS
    assert again.amount_billed == rent.amount_billed


def test_a_session_that_staged_once_keeps_its_buffers_and_sets_only_the_sample(engine):
    """The reconciliation stages once per organization on one connection: after the first, each
    organization's settings cost one statement (no savepoint, no second set_config)."""
    statements = []

    def count(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    engine.dispose()
    with engine.connect() as conn:
        use_staging_settings(conn)
        conn.commit()
        sa.event.listen(engine, "before_cursor_execute", count)
        try:
            use_staging_settings(conn)
        finally:
            sa.event.remove(engine, "before_cursor_execute", count)
        assert conn.execute(sa.text("SHOW default_statistics_target")).scalar_one() == str(STAGING_STATISTICS_TARGET)
        conn.rollback()
        assert conn.execute(sa.text("SHOW temp_buffers")).scalar_one() == STAGING_TEMP_BUFFERS
    assert len(statements) == 1, statements


def test_a_session_that_used_temporary_tables_keeps_its_buffers_and_bills_the_same(engine):
    with engine.begin() as conn:
        org = _organization_with_a_lease(conn)
    engine.dispose()
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TEMP TABLE callers_own (x int) ON COMMIT DROP"))
        conn.execute(sa.text("INSERT INTO callers_own VALUES (1)"))
        its_own = conn.execute(sa.text("SHOW temp_buffers")).scalar_one()
        rent, utility = _bill(conn, org)
        assert conn.execute(sa.text("SHOW temp_buffers")).scalar_one() == its_own != STAGING_TEMP_BUFFERS
        assert conn.execute(sa.text("SELECT x FROM callers_own")).scalar_one() == 1  # its transaction goes on
    assert (rent.invoices_created, rent.amount_billed) == (1, Decimal("1200.00"))
    assert (utility.statements_billed, utility.amount_billed) == (1, Decimal("31.40"))


def test_the_staging_tables_are_analyzed_from_a_small_sample_and_the_setting_ends_with_the_transaction(engine):
    """use_staging_settings sets the sample for the transaction (STAGING_STATISTICS_TARGET), instead of
    an ALTER TABLE … SET STATISTICS per staging table: the engine's staging tables get a histogram of
    at most that many buckets, and the next transaction has the server's default again."""
    with engine.begin() as conn:
        org = add_organization(conn, "Sampled")
        for i in range(60):
            add_lease(conn, org, date(2025, 1, 1), rent=f"{1000 + i}.00")
        default = conn.execute(sa.text("SHOW default_statistics_target")).scalar_one()
    with engine.connect() as conn:
        rent, _ = _bill(conn, org)
        buckets = conn.execute(
            sa.text(
                "SELECT cardinality(histogram_bounds::text::bigint[]) - 1 FROM pg_stats "
                "WHERE tablename = 'tm_rent_lease' AND attname = 'lease_id'"
            )
        ).scalar_one()
        conn.rollback()
        assert conn.execute(sa.text("SHOW default_statistics_target")).scalar_one() == default
    assert rent.invoices_created == 60
    assert buckets == STAGING_STATISTICS_TARGET < int(default)
