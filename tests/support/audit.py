"""The audit every reliability scenario ends with: nothing lost, nothing doubled, nothing changed.

Checks, over the whole TentMan database (or the organizations given):
- at most one invoice per lease, type and period; totals equal the sum of their lines;
- every line of a draft rent invoice equals the reference computation (tentman.billing.proration.prorate,
  in Python) from the current lease and charge data, service periods included, and every billable
  lease of a billed organization and period has its invoice (nothing lost);
- every utility line equals its statement, and every finalized statement is billed exactly once
  or still pending (linked to no line and on no line);
- issued, paid and void invoices (and their lines) are exactly as in the snapshot taken before;
- `invoice_runs` rows add up, and the latest completed rent run of an organization and period
  counts as many successes as there are draft rent invoices for it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date

import sqlalchemy as sa

from tentman.application_schema import MAX_AMOUNT
from tentman.billing.periods import BillingPeriod
from tentman.billing.proration import prorate
from tentman.names import ProrationMethod, RunStatus, RunType

KNOWN_STATUSES = {"draft", "active", "terminated", "ended"}


@dataclass
class AuditReport:
    invoices_checked: int = 0
    anomalies: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.anomalies == [], "\n".join(self.anomalies[:50])


def snapshot_finalized(conn) -> dict:
    """Issued/paid/void invoices and their lines, to compare after a scenario."""
    invoices = {
        r.id: tuple(r) for r in conn.execute(sa.text("SELECT * FROM invoices WHERE status <> 'draft' ORDER BY id"))
    }
    lines = {
        r.id: tuple(r)
        for r in conn.execute(
            sa.text("SELECT l.* FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id WHERE i.status <> 'draft'")
        )
    }
    return {"invoices": invoices, "lines": lines}


def _rows(conn, sql: str, **params) -> list:
    return list(conn.execute(sa.text(sql), params))


def audit(
    conn,
    *,
    before: dict | None = None,
    default_method: ProrationMethod = ProrationMethod.ACTUAL_DAYS_IN_MONTH,
    organization_ids: list[int] | None = None,
) -> AuditReport:
    report = AuditReport()
    bad = report.anomalies
    scope = "" if organization_ids is None else "WHERE i.organization_id = ANY(:orgs)"
    params = {"orgs": organization_ids}
    invoices = _rows(
        conn,
        f"""
        SELECT i.*, r.proration_method
        FROM invoices i LEFT JOIN invoice_runs r ON r.id = i.invoice_run_id {scope}""",
        **params,
    )
    report.invoices_checked = len(invoices)
    lines_by_invoice = defaultdict(list)
    for line in _rows(conn, "SELECT * FROM invoice_lines"):
        lines_by_invoice[line.invoice_id].append(line)
    leases = {r.id: r for r in _rows(conn, "SELECT * FROM leases")}
    charges_by_lease = defaultdict(list)
    for charge in _rows(conn, "SELECT * FROM lease_recurring_charges"):
        charges_by_lease[charge.lease_id].append(charge)
    statements = {r.id: r for r in _rows(conn, "SELECT * FROM utility_statements")}

    # One invoice per lease, type and period.
    keys = Counter((i.lease_id, i.invoice_type, i.billing_period_start) for i in invoices)
    bad += [f"{n} invoices for lease/type/period {k}" for k, n in keys.items() if n > 1]

    for invoice in invoices:
        lines = lines_by_invoice[invoice.id]
        total = sum((line.amount for line in lines), start=0)
        if invoice.total != total or invoice.subtotal != invoice.total:
            bad.append(
                f"invoice {invoice.id}: total {invoice.total}/subtotal {invoice.subtotal} but lines sum to {total}"
            )
        lease = leases.get(invoice.lease_id)
        if lease is None or lease.organization_id != invoice.organization_id:
            bad.append(
                f"invoice {invoice.id} of organization {invoice.organization_id} "
                f"is for lease {invoice.lease_id} of another organization"
            )
            continue
        if invoice.status != "draft":
            continue
        period = BillingPeriod(invoice.billing_period_start, invoice.billing_period_end)
        if invoice.invoice_type == "rent":
            method = ProrationMethod.parse(invoice.proration_method) if invoice.proration_method else default_method
            expected = _expected_rent_lines(lease, charges_by_lease[lease.id], period, method)
            got = {
                (line.line_type, line.source_id): (line.amount, line.service_period_start, line.service_period_end)
                for line in lines
            }
            if got != expected:
                bad.append(
                    f"rent invoice {invoice.id} of lease {lease.id} for {period.label}: "
                    f"lines {got} != reference {expected}"
                )
        else:
            for line in lines:
                statement = statements.get(line.source_id)
                if line.line_type != "utility" or statement is None:
                    bad.append(f"utility invoice {invoice.id}: line {line.id} is not a statement's")
                elif (statement.amount, statement.period_start, statement.period_end, statement.lease_id) != (
                    line.amount,
                    line.service_period_start,
                    line.service_period_end,
                    invoice.lease_id,
                ):
                    bad.append(f"utility line {line.id} differs from statement {statement.id}")

    # Every finalized statement billed exactly once, or still pending.
    utility_lines = defaultdict(list)
    for invoice_lines in lines_by_invoice.values():
        for line in invoice_lines:
            if line.line_type == "utility":
                utility_lines[line.source_id].append(line.id)
    for statement in statements.values():
        on_lines = utility_lines.get(statement.id, [])
        if len(on_lines) > 1:
            bad.append(f"statement {statement.id} billed {len(on_lines)} times: lines {on_lines}")
        if statement.invoice_line_id is None and on_lines:
            bad.append(f"statement {statement.id} is on line {on_lines} but not linked to it")
        if statement.invoice_line_id is not None and statement.invoice_line_id not in on_lines:
            bad.append(f"statement {statement.id} linked to line {statement.invoice_line_id} that does not bill it")

    if before is not None:
        after = snapshot_finalized(conn)
        for kind in ("invoices", "lines"):
            for key, row in before[kind].items():
                if after[kind].get(key) != row:
                    bad.append(f"finalized {kind[:-1]} {key} changed: {row} -> {after[kind].get(key)}")

    _audit_runs(conn, invoices, leases, charges_by_lease, bad, organization_ids)
    return report


def _occupancy(lease, period: BillingPeriod) -> tuple[date, date] | None:
    if lease.start_date is None or lease.start_date > period.end:
        return None
    if lease.end_date is not None and lease.end_date < period.start:
        return None
    return max(lease.start_date, period.start), min(lease.end_date or period.end, period.end)


def _expected_rent_lines(lease, charges, period: BillingPeriod, method: ProrationMethod) -> dict:
    occupancy = _occupancy(lease, period)
    if occupancy is None:
        return {}
    start, end = occupancy
    expected = {
        ("rent", lease.id): (prorate(lease.monthly_rent, (end - start).days + 1, period.days, method), start, end)
    }
    for charge in charges:
        if not charge.is_active:
            continue
        c_start = max(charge.start_date or start, start)
        c_end = min(charge.end_date or end, end)
        if c_start <= c_end:
            expected[("recurring_charge", charge.id)] = (
                prorate(charge.amount, (c_end - c_start).days + 1, period.days, method),
                c_start,
                c_end,
            )
    return expected


def _billable(lease, charges, period: BillingPeriod, method: ProrationMethod) -> bool:
    """Python statement of which leases must have a rent invoice for the period."""
    if lease.status != "active" or _occupancy(lease, period) is None:
        return False
    if lease.monthly_rent is None or lease.monthly_rent < 0 or (lease.end_date and lease.end_date < lease.start_date):
        return False
    start, end = _occupancy(lease, period)
    for charge in charges:
        overlaps = (
            charge.is_active
            and (charge.start_date is None or charge.start_date <= end)
            and (charge.end_date is None or charge.end_date >= start)
        )
        if overlaps and (
            charge.amount is None
            or charge.amount < 0
            or (charge.end_date and charge.start_date and charge.end_date < charge.start_date)
        ):
            return False
    total = sum(amount for amount, _, _ in _expected_rent_lines(lease, charges, period, method).values())
    return total <= MAX_AMOUNT


def _audit_runs(conn, invoices, leases, charges_by_lease, bad, organization_ids) -> None:
    runs = _rows(conn, "SELECT * FROM invoice_runs ORDER BY completed_at NULLS FIRST, id")
    latest = {}
    for run in runs:
        if run.total_leases != run.success_count + run.skipped_count + run.failure_count:
            bad.append(f"invoice run {run.id}: counts do not add up")
        lease_errors = [e for e in run.errors if e.get("lease_id") is not None]
        if run.run_type == RunType.MONTHLY_RENT and run.status in (
            RunStatus.COMPLETED,
            RunStatus.COMPLETED_WITH_ERRORS,
        ):
            if run.failure_count != len(lease_errors):
                bad.append(
                    f"invoice run {run.id}: failure_count {run.failure_count} but {len(lease_errors)} lease errors"
                )
            latest[(run.organization_id, run.billing_period_start)] = run
    drafts = Counter(
        (i.organization_id, i.billing_period_start)
        for i in invoices
        if i.invoice_type == "rent" and i.status == "draft"
    )
    rent_invoices = {(i.lease_id, i.billing_period_start) for i in invoices if i.invoice_type == "rent"}
    for (org, period_start), run in latest.items():
        if organization_ids is not None and org not in organization_ids:
            continue
        if run.success_count != drafts[(org, period_start)]:
            bad.append(
                f"invoice run {run.id} (organization {org}, {period_start}): success_count {run.success_count} "
                f"but {drafts[(org, period_start)]} draft rent invoices"
            )
        period = BillingPeriod(run.billing_period_start, run.billing_period_end)
        method = ProrationMethod.parse(run.proration_method)
        for lease in leases.values():
            if (
                lease.organization_id == org
                and _billable(lease, charges_by_lease[lease.id], period, method)
                and (lease.id, period.start) not in rent_invoices
            ):
                bad.append(f"lease {lease.id} of organization {org} has no rent invoice for {period.label} (lost)")
