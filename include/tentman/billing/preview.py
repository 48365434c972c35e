"""Preview of a rent run: what it would write, per lease, beside the current draft.

It runs the very engine the DAG runs (`plan_rent_invoices`: `generate_rent_invoices`, as the
`dry_run` path does, and what it planned per lease) on the caller's transaction, after reading the
current drafts under the same organization lock. The caller rolls that transaction back (a UnitOfWork
that is never committed): nothing is written.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tentman.billing.leases import LeaseOutcome
from tentman.billing.locking import lock_organization
from tentman.billing.periods import BillingPeriod
from tentman.billing.rent import PlannedLease, plan_rent_invoices
from tentman.names import InvoiceStatus, InvoiceType, LineType, ProrationMethod

MAX_PREVIEW_LEASES = 500


def preview_rent(
    conn: Connection,
    *,
    organization_id: int,
    period: BillingPeriod,
    proration_method: ProrationMethod,
    limit: int = 100,
    offset: int = 0,
) -> dict:
    """The organization's rent run for `period` as it would be now, a page of leases at a time.

    Writes on `conn`'s transaction, which the caller must roll back.
    """
    limit = max(1, min(limit, MAX_PREVIEW_LEASES))
    lock_organization(conn, InvoiceType.RENT, organization_id)
    current_invoices, current_lines = _current_drafts(conn, organization_id, period)
    result, leases = plan_rent_invoices(
        conn,
        organization_id=organization_id,
        period=period,
        proration_method=proration_method,
        limit=limit,
        offset=offset,
    )
    return {
        "organization_id": organization_id,
        "billing_period_start": period.start.isoformat(),
        "billing_period_end": period.end.isoformat(),
        "proration_method": proration_method.value,
        "summary": result.to_dict(),
        "limit": limit,
        "offset": offset,
        "leases": [
            _lease_preview(
                lease,
                current_invoices.get(lease.lease_id),
                current_lines.get(lease.lease_id, []),
                [_line(line) for line in lease.lines],
            )
            for lease in leases
        ],
    }


def _line(line) -> dict:
    """A line as the page shows it: a current one (a row) or a planned one."""
    return {
        "line_type": line.line_type,
        "source_id": line.source_id,
        "description": line.description,
        "service_period_start": line.service_period_start.isoformat() if line.service_period_start else None,
        "service_period_end": line.service_period_end.isoformat() if line.service_period_end else None,
        "amount": str(line.amount),
    }


def _current_drafts(conn: Connection, organization_id: int, period: BillingPeriod) -> tuple[dict, dict]:
    """The organization's rent invoices of the period as they are now: {lease: invoice}, {lease: lines}."""
    invoices, lines = {}, defaultdict(list)
    for row in conn.execute(
        sa.text(
            """
            SELECT i.lease_id, i.id AS invoice_id, i.status, i.total, l.line_type, l.source_id,
                   l.description, l.service_period_start, l.service_period_end, l.amount
            FROM invoices i LEFT JOIN invoice_lines l ON l.invoice_id = i.id
            WHERE i.organization_id = :organization_id AND i.invoice_type = :invoice_type
              AND i.billing_period_start = :period_start
            ORDER BY i.lease_id, l.line_type DESC, l.source_id
            """
        ),
        {"organization_id": organization_id, "invoice_type": InvoiceType.RENT, "period_start": period.start},
    ):
        invoices[row.lease_id] = {"invoice_id": row.invoice_id, "status": row.status, "total": str(row.total)}
        if row.line_type is not None:
            lines[row.lease_id].append(_line(row))
    return invoices, lines


def _lease_preview(lease: PlannedLease, before: dict | None, before_lines: list[dict], after_lines: list[dict]) -> dict:
    """One lease of the preview: its new lines and total beside the current draft, and the changes."""
    skipped = before is not None and before["status"] != InvoiceStatus.DRAFT
    unchanged_by_run = bool(lease.error) or skipped
    new_total = None if unchanged_by_run else str(lease.total if lease.total is not None else Decimal("0.00"))
    if new_total is not None and before is not None:
        difference = str(Decimal(new_total) - Decimal(before["total"]))
    else:
        difference = new_total
    return {
        "lease_id": lease.lease_id,
        "unit_label": lease.unit_label,
        "outcome": (LeaseOutcome.FAILED if lease.error else (lease.outcome or LeaseOutcome.SKIPPED)).value,
        "error": lease.error,
        "lines": [] if unchanged_by_run else after_lines,
        "total": new_total,
        "current": before,
        "current_lines": before_lines,
        "changes": [] if unchanged_by_run else _changes(before_lines, after_lines),
        "difference": difference,
    }


def _changes(before: list[dict], after: list[dict]) -> list[dict]:
    """Lines added, removed or changed between the current draft and the preview."""
    old = {(line["line_type"], line["source_id"]): line for line in before}
    new = {(line["line_type"], line["source_id"]): line for line in after}
    changes = []
    for key in sorted(old.keys() | new.keys(), key=lambda k: (k[0] != LineType.RENT, k[0], k[1])):
        if key not in old:
            changes.append({"change": "added", **new[key]})
        elif key not in new:
            changes.append({"change": "removed", **old[key]})
        elif old[key] != new[key]:
            changes.append({"change": "changed", **new[key], "previous_amount": old[key]["amount"]})
    return changes
