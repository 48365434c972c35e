"""How an engine bills one organization, stage by stage: what rent and utility billing share.

Each engine declares its SQL as a StagedRun: the stages that stage the organization in temporary
tables, the write of the pending leases (retried on halves to isolate a lease at fault), and the
counts read back. StagedRun.bill runs them on the caller's transaction, each timed under its name.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy.engine import Connection

from tentman.billing.currency import organization_currency
from tentman.billing.locking import lock_organization
from tentman.billing.results import OrganizationBillingResult
from tentman.billing.staging import InsertFast, use_staging_settings, write_isolating_bad_leases
from tentman.billing.timing import StageClock
from tentman.db import execute
from tentman.names import InvoiceType

# A statement of a stage: SQL text, or a write tried without ON CONFLICT first.
Statement = str | InsertFast
Stage = tuple[str, Sequence[Statement]]
# Writes the pending leases with ids in [:first_lease_id, :last_lease_id]; returns what it counted.
WriteBatch = Callable[[Connection, dict, StageClock], Counter[str]]
# Runs once between the staging and the first write; may fill in the result.
BeforeWrite = Callable[[Connection, dict, OrganizationBillingResult], None]


def run_stages(conn: Connection, stages: Iterable[Stage], params: dict, clock: StageClock) -> None:
    """Run each stage's statements in order, timed under the stage's name."""
    for name, statements in stages:
        with clock.stage(name):
            for statement in statements:
                if isinstance(statement, InsertFast):
                    statement.execute(conn, params)  # the rows it skipped are found by a later stage
                else:
                    execute(conn, statement, params)


def start_organization_billing(
    conn: Connection, invoice_type: InvoiceType, organization_id: int
) -> tuple[OrganizationBillingResult, str | None]:
    """Take the organization's lock for `invoice_type` and check it can be billed.

    Returns the result to fill in and the invoice currency; the currency is None when the
    organization cannot be billed, and the result then carries the organization-level error.
    """
    use_staging_settings(conn)
    lock_organization(conn, invoice_type, organization_id)
    result = OrganizationBillingResult(organization_id)
    currency, org_error = organization_currency(conn, organization_id)
    if org_error:
        result.organization_error = org_error
        result.errors.append({"lease_id": None, "error": org_error})
    return result, currency


@dataclass(frozen=True)
class StagedRun:
    """One engine's SQL for one organization, by the stage names StageTimings reports.

    - "lock": the organization's lock for `invoice_type`, and its currency checked;
    - `staging`: run once, in order, into the engine's temporary tables;
    - `before_write` (a stage name and what it runs), when given: once, after the staging;
    - `write_stage_names`: the stages of `write_batch`, run once for all leases, or once per batch
      while leases at fault are isolated (write_isolating_bad_leases): `pending_lease_ids` lists the
      leases not written yet, `record_write_failure` (:lease_id, :reason) fails one;
    - "counts": `counts` (one row: total, success, skipped, failed, created, updated, unchanged,
      amount_billed) and `errors` (lease_id, error), read into the result.
    """

    invoice_type: InvoiceType
    staging: tuple[Stage, ...]
    write_stage_names: tuple[str, ...]
    write_batch: WriteBatch
    pending_lease_ids: str
    record_write_failure: str
    counts: str
    errors: str
    before_write: tuple[str, BeforeWrite] | None = None

    @property
    def stage_names(self) -> tuple[str, ...]:
        """Every stage a call that bills (a usable currency) reports, in order."""
        before_write = (self.before_write[0],) if self.before_write else ()
        return ("lock", *(name for name, _ in self.staging), *before_write, *self.write_stage_names, "counts")

    def bill(
        self, conn: Connection, organization_id: int, params: dict, clock: StageClock
    ) -> tuple[OrganizationBillingResult, Counter[str]]:
        """Bill the organization with the engine's `params` (its currency is added to them).

        Returns the result, and what the written batches of `write_batch` counted. An organization
        that cannot be billed has its lock taken and nothing else; its result says why.
        """
        with clock.stage("lock"):
            result, currency = start_organization_billing(conn, self.invoice_type, organization_id)
        if currency is None:
            return result, Counter()
        params = {**params, "currency": currency}
        run_stages(conn, self.staging, params, clock)
        if self.before_write:
            name, before_write = self.before_write
            with clock.stage(name):
                before_write(conn, params, result)
        written = write_isolating_bad_leases(
            conn,
            lambda first, last: self.write_batch(
                conn, {**params, "first_lease_id": first, "last_lease_id": last}, clock
            ),
            lambda: list(execute(conn, self.pending_lease_ids, params).scalars()),
            lambda lease_id, reason: execute(
                conn, self.record_write_failure, {**params, "lease_id": lease_id, "reason": reason}
            ),
        )
        with clock.stage("counts"):
            counts = execute(conn, self.counts, params).one()
            errors = execute(conn, self.errors, params).all()
        result.total_leases = counts.total
        result.success_count = counts.success
        result.skipped_count = counts.skipped
        result.failure_count = counts.failed
        result.invoices_created = counts.created
        result.invoices_updated = counts.updated
        result.invoices_unchanged = counts.unchanged
        result.amount_billed = counts.amount_billed or Decimal("0.00")
        result.errors = [{"lease_id": row.lease_id, "error": row.error} for row in errors]
        return result, written
