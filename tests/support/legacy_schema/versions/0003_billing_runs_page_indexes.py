"""Indexes of the "Billing runs" page: newest runs first, months, and covering invoice totals.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- The runs list, newest first, one page at a time.
        CREATE INDEX invoice_runs_started_idx ON invoice_runs (started_at DESC, id DESC);
        -- Month filter and the failure-rate trend.
        CREATE INDEX invoice_runs_period_idx ON invoice_runs (billing_period_start, run_type);
        -- Amount and count of an organization's invoices for a type and period, and the monthly
        -- trends, read from the index alone (index-only scans) instead of a million heap rows.
        DROP INDEX invoices_org_type_period_idx;
        CREATE INDEX invoices_org_type_period_idx
            ON invoices (organization_id, invoice_type, billing_period_start) INCLUDE (total, status);
        CREATE INDEX invoices_period_type_idx
            ON invoices (billing_period_start, invoice_type) INCLUDE (total, status);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP INDEX invoices_period_type_idx;
        DROP INDEX invoices_org_type_period_idx;
        CREATE INDEX invoices_org_type_period_idx ON invoices (organization_id, invoice_type, billing_period_start);
        DROP INDEX invoice_runs_period_idx;
        DROP INDEX invoice_runs_started_idx;
        """
    )
