"""What billing one organization did: the result an engine returns and a run records."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from tentman.names import RunStatus


@dataclass
class OrganizationBillingResult:
    """What billing one organization for one period did (or, for a dry run, would do)."""

    organization_id: int
    total_leases: int = 0
    success_count: int = 0
    skipped_count: int = 0
    failure_count: int = 0
    errors: list[dict] = field(default_factory=list)
    # Set when the organization itself cannot be billed (e.g. its currency is unusable).
    organization_error: str | None = None
    invoices_created: int = 0
    invoices_updated: int = 0
    invoices_unchanged: int = 0
    stale_drafts_removed: int = 0
    statements_billed: int = 0
    amount_billed: Decimal = Decimal("0.00")

    @property
    def status(self) -> RunStatus:
        """The status of the organization's `invoice_runs` row."""
        if self.organization_error:
            return RunStatus.FAILED
        return RunStatus.COMPLETED_WITH_ERRORS if self.failure_count else RunStatus.COMPLETED

    def to_dict(self) -> dict:
        return {
            "organization_id": self.organization_id,
            "status": self.status.value,
            "total_leases": self.total_leases,
            "success_count": self.success_count,
            "skipped_count": self.skipped_count,
            "failure_count": self.failure_count,
            "errors": self.errors,
            "invoices_created": self.invoices_created,
            "invoices_updated": self.invoices_updated,
            "invoices_unchanged": self.invoices_unchanged,
            "stale_drafts_removed": self.stale_drafts_removed,
            "statements_billed": self.statements_billed,
            "amount_billed": str(self.amount_billed),
        }
