"""Preview of a rent run: what it would write, per lease, beside the current draft — nothing written.

It runs the very engine the DAG runs (`generate_rent_invoices`, as the `dry_run` path does) inside
a transaction it rolls back, after reading the current drafts under the same organization lock.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tentman.billing import lock_organization
from tentman.periods import BillingPeriod
from tentman.proration import ProrationMethod
from tentman.rent import generate_rent_invoices

MAX_PREVIEW_LEASES = 500


def _line(row) -> dict:
    return {
        "line_type": row.line_type,
        "source_id": row.source_id,
        "description": row.description,
        "service_period_start": row.service_period_start.isoformat() if row.service_period_start else None,
        "service_period_end": row.service_period_end.isoformat() if row.service_period_end else None,
        "amount": str(row.amount),
    }


def preview_rent(
    engine: Engine,
    *,
    organization_id: int,
    period: BillingPeriod,
    proration_method: ProrationMethod,
    limit: int = 100,
    offset: int = 0,
) -> dict:
    """The organization's rent run for `period` as it would be now, a page of leases at a time."""
    limit = max(1, min(limit, MAX_PREVIEW_LEASES))
    with engine.connect() as conn:
        with conn.begin() as tx:
            conn.execute(sa.text("SET LOCAL statement_timeout = '60s'"))
            lock_organization(conn, "rent", organization_id)
            current = defaultdict(list)
            current_invoice = {}
            for row in conn.execute(
                sa.text(
                    """
                    SELECT i.lease_id, i.id AS invoice_id, i.status, i.total, l.line_type, l.source_id,
                           l.description, l.service_period_start, l.service_period_end, l.amount
                    FROM invoices i LEFT JOIN invoice_lines l ON l.invoice_id = i.id
                    WHERE i.organization_id = :org AND i.invoice_type = 'rent' AND i.billing_period_start = :p0
                    ORDER BY i.lease_id, l.line_type DESC, l.source_id
                    """
                ),
                {"org": organization_id, "p0": period.start},
            ):
                current_invoice[row.lease_id] = {"invoice_id": row.invoice_id, "status": row.status, "total": str(row.total)}
                if row.line_type is not None:
                    current[row.lease_id].append(_line(row))

            result = generate_rent_invoices(
                conn, organization_id=organization_id, period=period, proration_method=proration_method,
                invoice_run_id=None,
            )
            leases = conn.execute(
                sa.text(
                    """
                    SELECT l.lease_id, l.unit_label, l.error, t.total, t.outcome
                    FROM tm_rent_lease l LEFT JOIN tm_rent_target t ON t.lease_id = l.lease_id
                    ORDER BY l.lease_id LIMIT :limit OFFSET :offset
                    """
                ),
                {"limit": limit, "offset": offset},
            ).all() if result.organization_error is None else []
            new_lines = defaultdict(list)
            for row in conn.execute(
                sa.text(
                    """
                    SELECT * FROM tm_rent_line
                    WHERE lease_id = ANY(:ids) ORDER BY lease_id, line_type DESC, source_id
                    """
                ),
                {"ids": [r.lease_id for r in leases]},
            ) if leases else []:
                new_lines[row.lease_id].append(_line(row))
            tx.rollback()

    items = []
    for row in leases:
        before = current_invoice.get(row.lease_id)
        after_lines = new_lines.get(row.lease_id, [])
        before_lines = current.get(row.lease_id, [])
        skipped = before is not None and before["status"] != "draft"
        new_total = None if row.error or skipped else str(row.total if row.total is not None else Decimal("0.00"))
        items.append(
            {
                "lease_id": row.lease_id,
                "unit_label": row.unit_label,
                "outcome": "failed" if row.error else (row.outcome or "skipped"),
                "error": row.error,
                "lines": [] if row.error or skipped else after_lines,
                "total": new_total,
                "current": before,
                "current_lines": before_lines,
                "changes": _changes(before_lines, after_lines) if not (row.error or skipped) else [],
                "difference": str(Decimal(new_total) - Decimal(before["total"]))
                if new_total is not None and before is not None else new_total,
            }
        )
    return {
        "organization_id": organization_id,
        "billing_period_start": period.start.isoformat(),
        "billing_period_end": period.end.isoformat(),
        "proration_method": proration_method.value,
        "summary": result.to_dict(),
        "limit": limit,
        "offset": offset,
        "leases": items,
    }


def _changes(before: list[dict], after: list[dict]) -> list[dict]:
    """Lines added, removed or changed between the current draft and the preview."""
    old = {(line["line_type"], line["source_id"]): line for line in before}
    new = {(line["line_type"], line["source_id"]): line for line in after}
    changes = []
    for key in sorted(old.keys() | new.keys(), key=lambda k: (k[0] != "rent", k[0], k[1])):
        if key not in old:
            changes.append({"change": "added", **new[key]})
        elif key not in new:
            changes.append({"change": "removed", **old[key]})
        elif old[key] != new[key]:
            changes.append({"change": "changed", **new[key], "previous_amount": old[key]["amount"]})
    return changes
