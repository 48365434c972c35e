"""The preview: what the rent run would write, per lease, beside the current draft; writes nothing."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import sqlalchemy as sa

from support.factories import add_charge, add_lease, add_organization, invoice_for, lines
from tentman.billing.periods import BillingPeriod
from tentman.billing.preview import preview_rent
from tentman.billing.rent import generate_rent_invoices
from tentman.db import UnitOfWork
from tentman.names import ProrationMethod

MARCH = BillingPeriod.for_month(2026, 3)


def rolled_back_preview(engine, **kwargs) -> dict:
    """A preview in a unit of work that is never committed, as the page runs it."""
    with UnitOfWork(engine) as uow:
        return preview_rent(uow.connection, **kwargs)


ACTUAL = ProrationMethod.ACTUAL_DAYS_IN_MONTH


def table_counts(engine):
    with engine.connect() as conn:
        return [
            conn.execute(sa.text(f"SELECT count(*), max(xmin::text::bigint) FROM {t}")).one()
            for t in ("invoices", "invoice_lines", "invoice_runs")
        ]


def test_preview_shows_changes_and_equals_what_the_run_then_writes(engine):
    with engine.begin() as conn:
        org = add_organization(conn)
        changed = add_lease(conn, org, date(2025, 1, 1), None, "1000.00")
        parking = add_charge(conn, changed, "50.00", date(2025, 1, 1))
        new = add_lease(conn, org, date(2026, 3, 17), None, "3100.00")  # 15 days: 1500.00
        bad = add_lease(conn, org, date(2025, 1, 1), None, "-1.00")
        issued = add_lease(conn, org, date(2025, 1, 1), None, "700.00")
    with engine.begin() as conn:
        generate_rent_invoices(conn, organization_id=org, period=MARCH, proration_method=ACTUAL, invoice_run_id=None)
        conn.execute(sa.text("UPDATE invoices SET status = 'issued' WHERE lease_id = :l"), {"l": issued})
        conn.execute(sa.text("DELETE FROM invoices WHERE lease_id = :l"), {"l": new})
        conn.execute(sa.text("UPDATE leases SET monthly_rent = 1100.00 WHERE id = :l"), {"l": changed})
        storage = add_charge(conn, changed, "31.00", date(2026, 3, 22), charge_type="storage", description="Storage")
        conn.execute(sa.text("UPDATE lease_recurring_charges SET is_active = false WHERE id = :c"), {"c": parking})

    before = table_counts(engine)
    preview = rolled_back_preview(engine, organization_id=org, period=MARCH, proration_method=ACTUAL)
    assert table_counts(engine) == before  # nothing written
    assert preview["summary"]["success_count"] == 2 and preview["summary"]["failure_count"] == 1
    by_lease = {item["lease_id"]: item for item in preview["leases"]}
    assert set(by_lease) == {changed, new, bad, issued}

    c = by_lease[changed]
    assert c["outcome"] == "updated" and c["current"]["total"] == "1050.00"
    # 1100 + storage Mar 22..31 = 10 days: 31 * 10 / 31 = 10.00
    assert c["total"] == "1110.00" and c["difference"] == "60.00"
    assert [(ch["change"], ch["line_type"], ch["source_id"], ch["amount"]) for ch in c["changes"]] == [
        ("changed", "rent", changed, "1100.00"),
        ("removed", "recurring_charge", parking, "50.00"),
        ("added", "recurring_charge", storage, "10.00"),
    ]
    assert c["changes"][0]["previous_amount"] == "1000.00"
    assert (by_lease[new]["outcome"], by_lease[new]["total"], by_lease[new]["current"]) == ("created", "1500.00", None)
    assert (by_lease[bad]["outcome"], by_lease[bad]["error"]) == ("failed", "monthly_rent -1.00 is negative")
    assert (by_lease[issued]["outcome"], by_lease[issued]["total"]) == ("skipped", None)

    with engine.begin() as conn:  # the real run
        generate_rent_invoices(conn, organization_id=org, period=MARCH, proration_method=ACTUAL, invoice_run_id=None)
    with engine.connect() as conn:
        for lease in (changed, new):
            invoice = invoice_for(conn, lease, MARCH.start)
            assert str(invoice.total) == by_lease[lease]["total"]
            written = [
                {
                    "line_type": r.line_type,
                    "source_id": r.source_id,
                    "description": r.description,
                    "service_period_start": r.service_period_start.isoformat(),
                    "service_period_end": r.service_period_end.isoformat(),
                    "amount": str(r.amount),
                }
                for r in lines(conn, invoice.id)
            ]
            assert written == by_lease[lease]["lines"]
        assert invoice_for(conn, issued, MARCH.start).total == Decimal("700.00")


def test_preview_pages_through_leases(engine):
    with engine.begin() as conn:
        org = add_organization(conn)
        leases = [add_lease(conn, org, date(2025, 1, 1), None, f"{100 + i}.00") for i in range(7)]
    first = rolled_back_preview(engine, organization_id=org, period=MARCH, proration_method=ACTUAL, limit=3)
    last = rolled_back_preview(engine, organization_id=org, period=MARCH, proration_method=ACTUAL, limit=3, offset=6)
    assert [i["lease_id"] for i in first["leases"]] == leases[:3]
    assert [i["lease_id"] for i in last["leases"]] == leases[6:]
    assert first["summary"]["total_leases"] == 7
