"""Small helpers to write the TentMan application's rows in tests."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tentman.billing.organization_settings import BillingSettings, change_billing_settings
from tentman.names import InvoiceStatus, InvoiceType


def add_organization(conn: Connection, name: str = "Org", currency: str | None = "USD", is_active: bool = True) -> int:
    return conn.execute(
        sa.text("INSERT INTO organizations (name, currency, is_active) VALUES (:n, :c, :a) RETURNING id"),
        {"n": name, "c": currency, "a": is_active},
    ).scalar_one()


def add_lease(
    conn: Connection,
    organization_id: int | None,
    start: date | None,
    end: date | None = None,
    rent: Decimal | str | None = "1000.00",
    status: str | None = "active",
    unit: str = "1A",
    tenant: str = "Tenant",
) -> int:
    return conn.execute(
        sa.text(
            """
            INSERT INTO leases (organization_id, unit_label, tenant_name, start_date, end_date, monthly_rent, status)
            VALUES (:org, :unit, :tenant, :start, :end, :rent, :status) RETURNING id
            """
        ),
        {
            "org": organization_id,
            "unit": unit,
            "tenant": tenant,
            "start": start,
            "end": end,
            "rent": Decimal(rent) if isinstance(rent, str) else rent,
            "status": status,
        },
    ).scalar_one()


def add_charge(
    conn: Connection,
    lease_id: int,
    amount: Decimal | str | None,
    start: date | None = None,
    end: date | None = None,
    charge_type: str = "parking",
    description: str = "Parking",
    is_active: bool = True,
) -> int:
    return conn.execute(
        sa.text(
            """
            INSERT INTO lease_recurring_charges (lease_id, charge_type, description, amount, start_date, end_date,
                                                 is_active)
            VALUES (:lease, :type, :descr, :amount, :start, :end, :active) RETURNING id
            """
        ),
        {
            "lease": lease_id,
            "type": charge_type,
            "descr": description,
            "amount": Decimal(amount) if isinstance(amount, str) else amount,
            "start": start,
            "end": end,
            "active": is_active,
        },
    ).scalar_one()


def add_statement(
    conn: Connection,
    org: int,
    lease: int | None,
    amount="10.00",
    start=date(2026, 11, 1),
    end=date(2026, 11, 30),
    status="finalized",
    utility_type="water",
) -> int:
    return conn.execute(
        sa.text(
            """
            INSERT INTO utility_statements (organization_id, lease_id, utility_type, period_start, period_end,
                                            amount, status, finalized_at)
            VALUES (:org, :lease, :type, :start, :end, :amount, :status,
                    CASE WHEN :status = 'finalized' THEN now() END)
            RETURNING id
            """
        ),
        {
            "org": org,
            "lease": lease,
            "type": utility_type,
            "start": start,
            "end": end,
            "amount": Decimal(amount) if isinstance(amount, str) else amount,
            "status": status,
        },
    ).scalar_one()


def add_invoice(
    conn: Connection,
    organization_id: int,
    lease_id: int,
    period_start: date,
    period_end: date,
    total: Decimal | str,
    *,
    status: str = InvoiceStatus.ISSUED,
    invoice_type: str = InvoiceType.RENT,
    currency: str = "USD",
    due_date: date | None = None,
    invoice_run_id: int | None = None,
) -> int:
    """An invoice the application wrote itself, no lines (subtotal = total; due on `period_start`
    unless `due_date` says otherwise), its id."""
    return conn.execute(
        sa.text(
            """
            INSERT INTO invoices (organization_id, lease_id, invoice_type, billing_period_start, billing_period_end,
                                  status, currency, subtotal, total, due_date, invoice_run_id)
            VALUES (:org, :lease, :type, :start, :end, :status, :currency, :total, :total, :due, :run)
            RETURNING id
            """
        ),
        {
            "org": organization_id,
            "lease": lease_id,
            "type": invoice_type,
            "start": period_start,
            "end": period_end,
            "status": status,
            "currency": currency,
            "total": Decimal(total),
            "due": period_start if due_date is None else due_date,
            "run": invoice_run_id,
        },
    ).scalar_one()


def set_billing_settings(
    conn: Connection,
    organization_id: int,
    *,
    hold: bool = False,
    reason: str | None = None,
    proration_method: str | None = None,
    updated_by: str = "test",
    **schedule: object,
) -> BillingSettings:
    """Set the organization's billing settings as the settings page does (change_billing_settings, its
    audit row included): no hold and the platform's proration method unless given; the schedule fields
    given (SCHEDULE_FIELDS), the others keep their stored values. Returns the settings now."""
    settings, _ = change_billing_settings(
        conn,
        organization_id,
        billing_hold=hold,
        hold_reason=reason,
        proration_method=proration_method,
        updated_by=updated_by,
        **schedule,
    )
    return settings


def invoices(conn: Connection, invoice_type: str = "rent") -> list[sa.Row]:
    return list(
        conn.execute(
            sa.text("SELECT * FROM invoices WHERE invoice_type = :t ORDER BY lease_id, billing_period_start"),
            {"t": invoice_type},
        )
    )


def lines(conn: Connection, invoice_id: int) -> list[sa.Row]:
    return list(
        conn.execute(
            sa.text("SELECT * FROM invoice_lines WHERE invoice_id = :i ORDER BY line_type DESC, source_id"),
            {"i": invoice_id},
        )
    )


def invoice_for(conn: Connection, lease_id: int, period_start: date, invoice_type: str = "rent") -> sa.Row | None:
    return conn.execute(
        sa.text("SELECT * FROM invoices WHERE lease_id = :l AND invoice_type = :t AND billing_period_start = :p"),
        {"l": lease_id, "t": invoice_type, "p": period_start},
    ).one_or_none()


def inject_invoice_fault(conn: Connection, organization_id: int, failures: int | None = None) -> None:
    """Make writing this organization's invoices fail inside PostgreSQL (a test-only trigger).

    `failures=None` fails every attempt; `failures=N` fails the first N attempts only: the count
    lives in a sequence, which a rolled-back transaction does not undo.
    """
    org = int(organization_id)
    limit = "NULL" if failures is None else str(int(failures))
    conn.exec_driver_sql(
        f"""
        CREATE SEQUENCE IF NOT EXISTS test_fault_attempts_{org};
        CREATE OR REPLACE FUNCTION test_fault_{org}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF {limit} IS NULL OR nextval('test_fault_attempts_{org}') <= {limit} THEN
                RAISE EXCEPTION 'injected fault for organization {org}';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER test_fault_{org} BEFORE INSERT OR UPDATE ON invoices FOR EACH ROW
        WHEN (NEW.organization_id = {org}) EXECUTE FUNCTION test_fault_{org}();
        """
    )
