"""Per-organization summary of a DAG's latest run (`tentman runs summary`, which `make demo` prints)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tentman.names import InvoiceStatus, invoice_type_sql


def run_summary(conn: Connection, dag_id: str) -> list[sa.Row]:
    """Per-organization `invoice_runs` rows of the DAG's latest run, with the drafts of their period.

    `period_drafts` and `period_draft_total` count every draft invoice of the organization, type and
    period, whichever run or the app wrote it; not the "drafted invoices" of the Billing runs page,
    which are the ones linked to one run (tentman.ui.queries).
    """
    return list(
        conn.execute(
            sa.text(
                f"""
                WITH latest AS (
                    SELECT dag_run_id FROM invoice_runs WHERE dag_id = :dag_id
                    ORDER BY started_at DESC LIMIT 1
                )
                SELECT r.dag_run_id, r.organization_id, o.name, r.run_type, r.billing_period_start,
                       r.status, r.total_leases, r.success_count, r.skipped_count, r.failure_count,
                       r.errors,
                       d.period_drafts, d.period_draft_total
                FROM invoice_runs r
                JOIN organizations o ON o.id = r.organization_id
                CROSS JOIN LATERAL (
                    SELECT count(*) AS period_drafts, coalesce(sum(i.total), 0) AS period_draft_total
                    FROM invoices i
                    WHERE i.organization_id = r.organization_id
                      AND i.invoice_type = {invoice_type_sql("r.run_type")}
                      AND i.billing_period_start = r.billing_period_start
                      AND i.status = :draft
                ) d
                WHERE r.dag_id = :dag_id AND r.dag_run_id = (SELECT dag_run_id FROM latest)
                ORDER BY r.organization_id
                """
            ),
            {"dag_id": dag_id, "draft": InvoiceStatus.DRAFT},
        )
    )


def format_summary(rows: list[sa.Row]) -> str:
    if not rows:
        return "No invoice runs recorded yet."
    first = rows[0]
    lines = [
        f"Run {first.dag_run_id}: {first.run_type} for {first.billing_period_start:%Y-%m}",
        f"{'organization':<32} {'status':<22} {'leases':>6} {'ok':>4} {'skip':>4} {'fail':>4} "
        f"{'drafts':>6} {'draft total':>12}",
    ]
    for r in rows:
        lines.append(
            f"{(r.name or '')[:28] + ' #' + str(r.organization_id):<32} {r.status:<22} {r.total_leases:>6} "
            f"{r.success_count:>4} {r.skipped_count:>4} {r.failure_count:>4} {r.period_drafts:>6} "
            f"{r.period_draft_total:>12}"
        )
        for error in r.errors:
            lease = error.get("lease_id")
            lines.append(f"{'':4}! {'lease ' + str(lease) if lease is not None else 'no lease'}: {error.get('error')}")
    return "\n".join(lines)
