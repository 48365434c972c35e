"""The audit and the production reconciliation must agree. The audit (support.audit) is the tests'
own statement of a correct result and never calls production code; the reconciliation
(tentman.billing.reconciliation) is what production checks after every run and stores in
`run_reconciliations`. A reliability scenario compares the two over the audit's scope:

- the audit is clean: every billing invoice run in scope (rent, utility) that billed its
  organization (completed, completed_with_errors) has a stored verdict, and every verdict is ok;
  a scenario whose invoices came from invoice runs has at least one;
- the audit found anomalies: the reconciliation flagged at least one of those runs too.

A scenario that runs the steps without Airflow (no reconcile task) reconciles its runs itself
(tentman.runs.reconcile.reconcile_dag_run) before the audit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from support.audit import AuditReport
from tentman.names import RECONCILIATIONS_TABLE, RunStatus, RunType

BILLED = [RunStatus.COMPLETED.value, RunStatus.COMPLETED_WITH_ERRORS.value]
# Billing's own runs: an application's database may hold invoice runs of its own (late fees, say).
RUN_TYPES = [t.value for t in RunType]


@dataclass
class StoredVerdicts:
    """The verdicts of the billed invoice runs in scope, as `run_reconciliations` holds them."""

    runs: list[int] = field(default_factory=list)
    unchecked: list[int] = field(default_factory=list)  # billed, never reconciled
    failed: dict[int, list[str]] = field(default_factory=dict)  # invoice run → its failing checks
    invoices_of_runs: int = 0  # the scope's invoices written by a billing invoice run

    def summary(self) -> str:
        """The reliability report's column: "✓ 3 runs", "✗ rent_coverage", "✗ 1 unchecked" or "—"."""
        if self.failed:
            return "✗ " + ", ".join(sorted({c for checks in self.failed.values() for c in checks}))
        if self.unchecked:
            return f"✗ {len(self.unchecked)} unchecked"
        if not self.runs:
            return "—"
        return f"✓ {len(self.runs)} run{'s' if len(self.runs) != 1 else ''}"


class ReconciliationDisagrees(AssertionError):
    def __init__(self, message: str, verdicts: StoredVerdicts):
        super().__init__(message)
        self.verdicts = verdicts


def stored_verdicts(conn, *, organization_ids: list[int] | None = None) -> StoredVerdicts:
    rows = conn.execute(
        sa.text(
            f"""
            SELECT r.id, c.ok, c.checks
            FROM invoice_runs r LEFT JOIN {RECONCILIATIONS_TABLE} c ON c.invoice_run_id = r.id
            WHERE r.status = ANY(:billed) AND r.run_type = ANY(:run_types)
              AND (CAST(:orgs AS bigint[]) IS NULL OR r.organization_id = ANY(:orgs))
            ORDER BY r.id
            """
        ),
        {"billed": BILLED, "run_types": RUN_TYPES, "orgs": organization_ids},
    ).all()
    verdicts = StoredVerdicts(runs=[r.id for r in rows])
    verdicts.unchecked = [r.id for r in rows if r.ok is None]
    verdicts.failed = {r.id: [c["check"] for c in r.checks if not c["ok"]] for r in rows if r.ok is False}
    verdicts.invoices_of_runs = conn.execute(
        sa.text(
            """SELECT count(*) FROM invoices i JOIN invoice_runs r ON r.id = i.invoice_run_id
               WHERE r.run_type = ANY(:run_types)
                 AND (CAST(:orgs AS bigint[]) IS NULL OR i.organization_id = ANY(:orgs))"""
        ),
        {"run_types": RUN_TYPES, "orgs": organization_ids},
    ).scalar_one()
    return verdicts


def assert_reconciliation_agrees(
    conn, report: AuditReport, *, organization_ids: list[int] | None = None
) -> StoredVerdicts:
    """Assert that the stored verdicts agree with the audit's `report` over the same scope; returns
    them. ReconciliationDisagrees (an AssertionError) carries them when they do not."""
    verdicts = stored_verdicts(conn, organization_ids=organization_ids)
    problems = []
    if report.anomalies:
        if not verdicts.failed:
            problems.append(
                f"the audit found {len(report.anomalies)} anomalies but no stored verdict of the "
                f"{len(verdicts.runs)} billed runs in scope is a violation"
            )
    else:
        if verdicts.failed:
            problems.append(f"the audit is clean but the reconciliation flagged runs {verdicts.failed}")
        if verdicts.unchecked:
            problems.append(f"billed runs {verdicts.unchecked} have no stored verdict (never reconciled)")
        if verdicts.invoices_of_runs and not verdicts.runs:
            problems.append(f"{verdicts.invoices_of_runs} invoices were written by invoice runs, none of which billed")
    if problems:
        anomalies = "".join(f"\n  audit: {a}" for a in report.anomalies[:20])
        raise ReconciliationDisagrees(
            "the audit and the reconciliation disagree: " + "; ".join(problems) + anomalies, verdicts
        )
    return verdicts
