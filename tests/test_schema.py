"""The TentMan database: the bundle's own schema (tentman_billing), and the application's tables it adopts.

- A database the application made (other DDL: extra columns, tables, foreign keys, CHECKs, other
  names) is adopted by `tentman db upgrade`: only tentman_billing is created, not a byte of the
  application's tables changes.
- `tentman db check` names every contract column, key and index that is missing, with its fix.
- An install of 0.1.0 (everything in `public`) upgrades in place without losing a row, and back.
- A database with none of the application's tables is refused unless asked to create them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from support.application import TENTMAN, application_database, tentman
from support.databases import create_database, drop_database
from support.factories import add_charge, add_lease, add_organization, add_statement
from support.legacy import build_legacy_install
from tentman.application_schema import FOREIGN_KEYS, INDEXES, TABLE_NAMES, TABLES, UNIQUE_KEYS, contract_report
from tentman.billing.organization_settings import billing_settings
from tentman.billing.proration import prorate
from tentman.db import create_engine_from_uri
from tentman.migrate import SchemaNotReady, current_revision, head_revision, upgrade
from tentman.names import BILLING_SCHEMA, ProrationMethod
from tentman_dev.local import with_database

# The catalog of the application's tables, to compare before and after: columns, constraints, indexes.
CATALOG = """
SELECT 'column' AS kind, c.relname, a.attname AS name,
       format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '') AS definition
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'constraint', c.relname, k.conname, pg_get_constraintdef(k.oid)
FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public'
UNION ALL
SELECT 'index', c.relname, i.relname, pg_get_indexdef(i.oid)
FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class c ON c.oid = x.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public'
UNION ALL
SELECT 'trigger', c.relname, t.tgname, pg_get_triggerdef(t.oid)
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND NOT t.tgisinternal
ORDER BY 1, 2, 3
"""


def catalog(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(CATALOG))]


def all_rows(engine, tables) -> dict[str, list[tuple]]:
    with engine.connect() as conn:
        return {t: sorted(map(tuple, conn.execute(sa.text(f"SELECT * FROM {t}")))) for t in tables}


def as_in_0_1_0(after: dict, before: dict) -> list[list[tuple]]:
    """`after`'s rows cut to the columns their table had in 0.1.0 (`before`): later revisions add
    nullable columns to the settings tables (0006: the schedules), null on every row they kept."""
    rows_as_before = []
    for rows, old in zip(after.values(), before.values(), strict=True):
        width = len(old[0]) if old else None
        assert all(value is None for row in rows for value in row[width:]) if width else True
        rows_as_before.append([row[:width] for row in rows])
    return rows_as_before


@pytest.fixture
def empty_db(pg_admin_uri):
    name = create_database(pg_admin_uri, "tentman_empty")
    uri = with_database(pg_admin_uri, name)
    engine = create_engine_from_uri(uri)
    yield uri, engine
    engine.dispose()
    drop_database(pg_admin_uri, name)


def test_upgrade_adopts_a_database_the_application_made_and_changes_none_of_its_tables(empty_db):
    uri, engine = empty_db
    application_database(engine)
    before_catalog = catalog(engine)
    tables = (*TABLE_NAMES, "payments", "tenant_notes")
    before_rows = all_rows(engine, tables)

    upgraded = tentman("db", "upgrade", uri=uri)
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.splitlines() == [
        f"TentMan billing schema ({BILLING_SCHEMA}) at revision {head_revision()}",
        f"TentMan application schema: contract holds ({len(TABLES)} tables, {len(UNIQUE_KEYS)} unique keys)",
    ]
    assert catalog(engine) == before_catalog
    assert all_rows(engine, tables) == before_rows
    with engine.connect() as conn:
        assert set(
            conn.execute(
                sa.text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
                {"s": BILLING_SCHEMA},
            ).scalars()
        ) == {
            "alembic_version",
            "organization_billing_settings",
            "organization_billing_settings_audit",
            "organization_schedule_claims",
            "run_reconciliations",
        }
        # Nothing of the bundle's in the application's schema.
        assert conn.execute(sa.text("SELECT to_regclass('public.alembic_version')")).scalar() is None
    # Again: nothing to do, and still nothing changed.
    assert tentman("db", "upgrade", uri=uri).returncode == 0
    assert catalog(engine) == before_catalog

    checked = tentman("db", "check", uri=uri)
    assert (checked.returncode, checked.stdout.count("\n")) == (0, 1), checked.stdout


def test_upgrade_refuses_a_database_without_the_application_tables_unless_asked(empty_db):
    uri, engine = empty_db
    refused = tentman("db", "upgrade", uri=uri)
    assert refused.returncode == 2
    assert "has none of the TentMan application's tables (organizations, leases," in refused.stderr
    assert "`tentman db upgrade --with-application-tables`" in refused.stderr
    with engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT to_regnamespace('{BILLING_SCHEMA}')")).scalar() is None

    created = tentman("db", "upgrade", "--with-application-tables", uri=uri)
    assert created.returncode == 0, created.stderr
    assert "contract holds" in created.stdout
    assert current_revision(engine) == head_revision()


def test_part_of_the_application_tables_is_never_completed(empty_db):
    uri, engine = empty_db
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE organizations (id bigint PRIMARY KEY, name text)")
    refused = tentman("db", "upgrade", "--with-application-tables", uri=uri)
    assert refused.returncode == 2
    assert "has the application tables organizations but not leases, lease_recurring_charges" in refused.stderr
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass('leases')")).scalar() is None


# Every item of the contract, removed one at a time: `tentman db check` names it.
CONTRACT_ITEMS = (
    [
        pytest.param(
            f"ALTER TABLE {t.name} DROP COLUMN {c.name} CASCADE",
            f"missing column {t.name}.{c.name}",
            id=f"{t.name}.{c.name}",
        )
        for t in TABLES
        for c in t.columns
    ]
    + [pytest.param(f"DROP TABLE {t.name} CASCADE", f"missing table {t.name}", id=t.name) for t in TABLES]
    + [
        pytest.param(
            f"DROP INDEX {k.name}" if k.where else f"ALTER TABLE {k.table} DROP CONSTRAINT {k.name} CASCADE",
            f"missing unique key {k.name}",
            id=k.name,
        )
        for k in UNIQUE_KEYS
    ]
    + [
        pytest.param(
            f"ALTER TABLE {fk.table} DROP CONSTRAINT {fk.table}_{fk.column}_fkey",
            f"missing foreign key {fk.table}.{fk.column}",
            id=f"{fk.table}.{fk.column}_fkey",
        )
        for fk in FOREIGN_KEYS
    ]
    + [pytest.param(f"DROP INDEX {i.name}", f"warning: missing index {i.name}", id=i.name) for i in INDEXES]
)


@pytest.mark.parametrize(("ddl", "named"), CONTRACT_ITEMS)
def test_check_names_each_missing_contract_item(engine, ddl, named):
    with engine.begin() as conn:
        conn.exec_driver_sql(ddl)
        report = contract_report(conn)
    messages = [f"error: {e}" for e in report.errors] + [f"warning: {w}" for w in report.warnings]
    assert any(named in message for message in messages), (named, messages)
    assert report.holds == named.startswith("warning:")


def test_check_names_wrong_types_nulls_defaults_and_checks_with_their_fix(db_uri, engine):
    with engine.begin() as conn:
        conn.exec_driver_sql(
            """
            ALTER TABLE invoices ALTER COLUMN subtotal TYPE double precision;
            ALTER TABLE invoice_runs ALTER COLUMN completed_at SET NOT NULL;
            ALTER TABLE invoices ALTER COLUMN created_at DROP DEFAULT;
            ALTER TABLE invoices ADD COLUMN invoice_number text NOT NULL;
            ALTER TABLE invoice_runs DROP CONSTRAINT invoice_runs_status_check;
            ALTER TABLE invoice_runs ADD CONSTRAINT invoice_runs_status_check
                CHECK (status IN ('running', 'completed', 'completed_with_errors', 'failed'));
            DROP INDEX invoices_period_type_idx;
            """
        )
    checked = tentman("db", "check", uri=db_uri)
    assert checked.returncode == 1
    lines = checked.stdout.splitlines()
    assert lines[0] == "TentMan application schema: 5 difference(s) billing cannot run with:"
    assert lines[1:] == [
        "  error: CHECK invoice_runs_status_check on invoice_runs.status refuses 'on_hold', which billing writes "
        "(it accepts: CHECK ((status = ANY (ARRAY['running'::text, 'completed'::text, "
        "'completed_with_errors'::text, 'failed'::text])))); billing writes running, completed, "
        "completed_with_errors, failed, on_hold",
        "  error: column invoice_runs.completed_at is NOT NULL, and billing writes NULL into it: "
        "ALTER TABLE invoice_runs ALTER COLUMN completed_at DROP NOT NULL;",
        "  error: column invoices.subtotal is double precision; billing expects numeric: "
        "ALTER TABLE invoices ALTER COLUMN subtotal TYPE numeric;",
        "  error: column invoices.created_at has no default, and billing inserts rows without it: "
        "ALTER TABLE invoices ALTER COLUMN created_at SET DEFAULT ...;",
        "  error: column invoices.invoice_number is NOT NULL without a default, and billing inserts rows into "
        "invoices without it: ALTER TABLE invoices ALTER COLUMN invoice_number SET DEFAULT ...; (or DROP NOT NULL)",
        "  warning: missing index invoices_period_type_idx on invoices (billing_period_start, invoice_type), the "
        "page's monthly trends: CREATE INDEX CONCURRENTLY invoices_period_type_idx ON invoices "
        "(billing_period_start, invoice_type) INCLUDE (total, status);",
    ]


def test_an_install_of_0_1_0_upgrades_in_place_without_losing_a_row_and_downgrades_back(empty_db):
    uri, engine = empty_db
    build_legacy_install(engine)
    with engine.begin() as conn:
        org = add_organization(conn, "Harbor View")
        lease = add_lease(conn, org, date(2025, 1, 1), None, "1450.00")
        add_charge(conn, lease, "60.00", date(2025, 1, 1))
        add_statement(conn, org, lease, "41.17")
        # 0.1.0's settings and audit, in `public`, as that release wrote them.
        conn.exec_driver_sql(
            f"""
            INSERT INTO organization_billing_settings (organization_id, billing_hold, hold_reason, proration_method,
                                                       updated_by)
            VALUES ({org}, true, 'migration', 'ThirtyDayMonth', 'ops');
            INSERT INTO organization_billing_settings_audit (organization_id, changed_by, old_billing_hold,
                                                             new_billing_hold, new_hold_reason, new_proration_method)
            VALUES ({org}, 'ops', false, true, 'migration', 'ThirtyDayMonth');
            """
        )
        conn.exec_driver_sql(
            f"""
            INSERT INTO invoice_runs (organization_id, run_type, billing_period_start, billing_period_end, status,
                                      dag_id, dag_run_id)
            VALUES ({org}, 'monthly_rent', '2026-12-01', '2026-12-31', 'completed', 'd', 'r1');
            INSERT INTO invoices (organization_id, lease_id, invoice_type, billing_period_start, billing_period_end,
                                  currency, subtotal, total, due_date, invoice_run_id)
            VALUES ({org}, {lease}, 'rent', '2026-12-01', '2026-12-31', 'USD', 1510, 1510, '2026-12-01',
                    (SELECT id FROM invoice_runs));
            INSERT INTO invoice_lines (invoice_id, line_type, source_id, description, amount)
            VALUES ((SELECT id FROM invoices), 'rent', {lease}, 'Rent', 1450);
            """
        )
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM public.tentman_alembic_version")).scalar() == "0004"
    settings = ("organization_billing_settings", "organization_billing_settings_audit")
    before_rows = all_rows(engine, (*TABLE_NAMES, *settings))
    before_catalog = [row for row in catalog(engine) if row[1] in TABLE_NAMES]

    upgraded = tentman("db", "upgrade", uri=uri)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "contract holds" in upgraded.stdout
    after_rows = all_rows(engine, (*TABLE_NAMES, *(f"{BILLING_SCHEMA}.{t}" for t in settings)))
    assert as_in_0_1_0(after_rows, before_rows) == list(before_rows.values())
    assert [row for row in catalog(engine) if row[1] in TABLE_NAMES] == before_catalog
    with engine.connect() as conn:
        for legacy in ("tentman_alembic_version", *settings):
            assert conn.execute(sa.text(f"SELECT to_regclass('public.{legacy}')")).scalar() is None
        assert billing_settings(conn, org).proration_method == "ThirtyDayMonth"
        prorated = conn.execute(
            sa.text(f"SELECT {BILLING_SCHEMA}.tentman_prorate(1450, 10, 31, 'ActualDaysInMonth')")
        ).scalar()
    assert prorated == prorate(Decimal("1450"), 10, 31, ProrationMethod.ACTUAL_DAYS_IN_MONTH) == Decimal("467.74")
    assert current_revision(engine) == head_revision()

    # Back to 0.1.0's layout, which that release runs on, and forward again: still every row.
    downgraded = tentman("db", "downgrade", "base", uri=uri)
    assert downgraded.returncode == 0, downgraded.stderr
    assert downgraded.stdout == "TentMan billing schema at revision base (the layout of release 0.1.0)\n"
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM public.tentman_alembic_version")).scalar() == "0004"
    assert all_rows(engine, (*TABLE_NAMES, *settings)) == before_rows
    upgrade(engine)
    again = all_rows(engine, (*TABLE_NAMES, *(f"{BILLING_SCHEMA}.{t}" for t in settings)))
    assert as_in_0_1_0(again, before_rows) == list(before_rows.values())


def test_an_install_behind_0_1_0s_head_is_told_to_take_that_release_first(empty_db):
    uri, engine = empty_db
    build_legacy_install(engine, "0002")
    with pytest.raises(SchemaNotReady, match="to revision 0002; this release upgrades installs at revision 0004"):
        upgrade(engine)
    with engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT to_regnamespace('{BILLING_SCHEMA}')")).scalar() is None


@pytest.mark.airflow
def test_the_command_reads_the_connection_wherever_airflow_keeps_it(airflow_home, db_uri):
    """No AIRFLOW_CONN_TENTMAN_DB: `tentman db check` finds `tentman_db` in Airflow's metadata database,
    as it would in a secrets backend (docs/deployment.md "3. Connect the TentMan database")."""
    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW_CONN_TENTMAN_DB"}
    airflow = str(Path(sys.executable).with_name("airflow"))
    missing = subprocess.run([TENTMAN, "db", "check"], capture_output=True, text=True, env=env, timeout=120)
    assert missing.returncode == 2
    assert "no Airflow connection 'tentman_db' (looked in the environment, the secrets backend" in missing.stderr
    added = subprocess.run(
        [airflow, "connections", "add", "tentman_db", "--conn-uri", db_uri], capture_output=True, text=True, env=env
    )
    assert added.returncode == 0, added.stderr
    try:
        checked = subprocess.run([TENTMAN, "db", "check"], capture_output=True, text=True, env=env, timeout=120)
        assert (checked.returncode, checked.stdout.count("\n")) == (0, 1), checked.stdout + checked.stderr
        assert "contract holds" in checked.stdout
    finally:
        subprocess.run([airflow, "connections", "delete", "tentman_db"], capture_output=True, env=env, check=True)
