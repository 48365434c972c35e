"""Run reconciliations: each organization's part of each run, checked after the run.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04

One row per `invoice_runs` row (the application's table, which the bundle does not alter): the
transaction window of the run (for the `hands_off` check), when it was checked, the verdict, and
each check's result with the first offending ids (tentman.billing.reconciliation).
"""

from alembic import op

from tentman.names import RECONCILIATIONS_TABLE

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        f"""
        CREATE TABLE {RECONCILIATIONS_TABLE} (
            invoice_run_id       bigint PRIMARY KEY,
            organization_id      bigint,
            run_type             text,
            billing_period_start date,
            dag_id               text,
            dag_run_id           text,
            -- The transactions (32-bit ids, as a row's xmin) that opened the organization's run and
            -- that first reconciled it: rows of issued invoices written between them were changed
            -- during the run.
            started_xid          bigint,
            ended_xid            bigint,
            checked_at           timestamptz,
            ok                   boolean,
            -- [{{"check", "ok", "violations", "ids" (the first 100), "note"}}, …]
            checks               jsonb
        );
        CREATE INDEX run_reconciliations_run_idx ON {RECONCILIATIONS_TABLE} (dag_id, dag_run_id);
        """
    )


def downgrade() -> None:
    op.execute(f"DROP TABLE {RECONCILIATIONS_TABLE}")
