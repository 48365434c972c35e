"""Both DAGs bill TentMan's own database: tables the application made, as the role docs/schema.md grants.

The database is the application's (support.application: other DDL, extra columns, tables, foreign
keys and CHECKs, rows of its own); the role has exactly the privileges docs/schema.md lists, runs
`tentman db upgrade` itself, and is the `tentman_db` connection of both DAG runs. The audit holds,
and none of the application's own rows changes.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa

from support.application import application_database, tentman, with_user
from support.dags import load_dag
from support.databases import create_database, drop_database
from support.factories import add_lease, set_billing_settings
from tentman.db import create_engine_from_uri
from tentman.names import LIST_ORGANIZATIONS_TASK, RENT_DAG_ID, RESOLVE_PERIOD_TASK, UTILITY_DAG_ID
from tentman_dev.local import REPO_ROOT, with_database

pytestmark = pytest.mark.airflow

SCHEMA_DOC = REPO_ROOT / "docs" / "schema.md"


def billing_role_grants(role: str) -> str:
    """The ```sql block of docs/schema.md's "The billing role", for `role`."""
    section = SCHEMA_DOC.read_text().split("## The billing role", 1)[1]
    sql = re.search(r"```sql\n(.*?)```", section, re.S).group(1)
    return sql.replace(":role", role)


@pytest.fixture
def adopted(pg_admin_uri, airflow_home, monkeypatch):
    """(engine as the owner, the billing role's URI): the application's database, adopted by that role."""
    name = create_database(pg_admin_uri, "tentman_adopted")
    owner_uri = with_database(pg_admin_uri, name)
    owner = create_engine_from_uri(owner_uri)
    application_database(owner)
    role = f"tentman_billing_{uuid.uuid4().hex[:10]}"  # roles are server-wide: unique, dropped after
    with owner.begin() as conn:
        conn.exec_driver_sql(billing_role_grants(role))
    role_uri = with_user(owner_uri, role)
    monkeypatch.setenv("AIRFLOW_CONN_TENTMAN_DB", role_uri)
    try:
        yield owner, role_uri
    finally:
        owner.dispose()
        drop_database(pg_admin_uri, name)
        admin = create_engine_from_uri(pg_admin_uri, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP ROLE {role}")
        admin.dispose()


def application_rows(engine) -> dict:
    """The rows the application wrote itself: billing must leave every one as it was."""
    with engine.connect() as conn:
        return {
            "invoices": conn.execute(sa.text("SELECT * FROM invoices WHERE origin = 'application'")).all(),
            "lines": conn.execute(sa.text("SELECT * FROM invoice_lines WHERE line_type = 'late_fee'")).all(),
            "runs": conn.execute(sa.text("SELECT * FROM invoice_runs WHERE run_type = 'late_fees'")).all(),
            "payments": conn.execute(sa.text("SELECT * FROM payments")).all(),
            "notes": conn.execute(sa.text("SELECT * FROM tenant_notes")).all(),
            "organizations": conn.execute(sa.text("SELECT * FROM organizations ORDER BY id")).all(),
        }


def test_both_dags_bill_the_applications_database_as_the_documented_role(adopted, audited):
    owner, role_uri = adopted
    upgraded = tentman("db", "upgrade", uri=role_uri)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "contract holds" in upgraded.stdout

    with owner.begin() as conn:
        harbor = conn.execute(sa.text("SELECT id FROM organizations WHERE slug = 'harbor-view'")).scalar_one()
        cedar = conn.execute(
            sa.text("INSERT INTO organizations (name, slug) VALUES ('Cedar Lofts', 'cedar-lofts') RETURNING id")
        ).scalar_one()
        mid_month = add_lease(conn, cedar, date(2026, 12, 10), None, "2000.00")  # 2000 * 22 / 31 = 1419.35
    before = application_rows(owner)
    role = create_engine_from_uri(role_uri)
    try:
        with role.begin() as conn:  # the page's settings change, as the billing role
            set_billing_settings(conn, harbor, proration_method="ThirtyDayMonth", updated_by="ops")
    finally:
        role.dispose()

    rent = load_dag(RENT_DAG_ID).test(logical_date=datetime(2026, 11, 26, 2, tzinfo=UTC))  # bills December
    assert rent.state == "success"
    utility = load_dag(UTILITY_DAG_ID).test(logical_date=datetime(2026, 12, 7, 3, tzinfo=UTC))
    assert utility.state == "success"

    with owner.connect() as conn:
        invoices = conn.execute(
            sa.text(
                "SELECT i.lease_id, i.invoice_type, i.total, i.origin, i.invoice_number FROM invoices i "
                "WHERE i.origin = 'billing' ORDER BY i.invoice_type, i.lease_id"
            )
        ).all()
        harbor_lease = conn.execute(sa.text("SELECT id FROM leases WHERE organization_id = :o"), {"o": harbor}).scalar()
        linked = conn.execute(sa.text("SELECT count(*) FROM utility_statements WHERE invoice_line_id IS NOT NULL"))
        runs = conn.execute(
            sa.text("SELECT run_type, organization_id, status FROM invoice_runs WHERE run_type <> 'late_fees'")
        ).all()
    # The application's defaults fill its own columns; billing's amounts are to the cent.
    assert [tuple(r) for r in invoices] == [
        (harbor_lease, "rent", Decimal("1510.00"), "billing", None),
        (mid_month, "rent", Decimal("1419.35"), "billing", None),
        (harbor_lease, "utility", Decimal("41.17"), "billing", None),
    ]
    assert linked.scalar() == 1
    assert sorted(map(tuple, runs)) == [
        ("monthly_rent", harbor, "completed"),
        ("monthly_rent", cedar, "completed"),
        ("utility", harbor, "completed"),
        ("utility", cedar, "completed"),
    ]
    assert application_rows(owner) == before
    audited(owner)


def test_a_database_without_a_key_billing_relies_on_fails_the_first_task_at_once(adopted):
    """The idempotency key gone (the application dropped it): no run bills a thing, and no retry waits."""
    owner, role_uri = adopted
    assert tentman("db", "upgrade", uri=role_uri).returncode == 0
    with owner.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE invoices DROP CONSTRAINT uq_invoice_lease_type_period")
    run = load_dag(RENT_DAG_ID).test(logical_date=datetime(2026, 11, 26, 2, tzinfo=UTC))
    assert run.state == "failed"
    from airflow.utils.session import create_session

    with create_session() as session:
        states = {ti.task_id: (ti.state, ti.try_number) for ti in run.get_task_instances(session=session)}
    # Failed, not up_for_retry: a retry cannot add a unique key.
    assert states[RESOLVE_PERIOD_TASK] == ("failed", 1)
    assert states[LIST_ORGANIZATIONS_TASK][0] == "upstream_failed"
    with owner.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM invoices WHERE origin = 'billing'")).scalar() == 0
    checked = tentman("db", "check", uri=role_uri)
    assert checked.returncode == 1
    assert "missing unique key invoices_one_per_lease_type_period on invoices" in checked.stdout
