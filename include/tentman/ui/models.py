"""The shapes of the page's JSON API (what /tentman/openapi.json documents), apart from its routes."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, Field, StrictBool

from tentman.names import BILLING_MONTH_PATTERN, DEFAULT_PRORATION_METHOD, ProrationMethod, RunStatus, RunType

PRORATION_METHODS = ", ".join(m.value for m in ProrationMethod)


# Runs: /api/runs, /api/runs/{run_id}


class LeaseError(BaseModel):
    lease_id: int | None = Field(description="The lease, or null for an organization-level error")
    error: str


class Run(BaseModel):
    """One organization's part of one DAG run (a row of `invoice_runs`)."""

    id: int
    dag_id: str
    dag_run_id: str
    organization_id: int
    organization_name: str | None
    run_type: RunType
    billing_period_start: date
    billing_period_end: date
    proration_method: str | None
    status: RunStatus
    total_leases: int
    success_count: int
    skipped_count: int
    failure_count: int
    errors: list[LeaseError]
    started_at: datetime
    completed_at: datetime | None
    duration_seconds: float | None
    drafted_invoices: int = Field(
        description="Invoices linked to this run by `invoices.invoice_run_id`: the drafts it created or updated "
        "(rent and utility) or found unchanged (rent), whatever their status since, unless a later run of the same "
        "organization and period has written them since; void ones excluded"
    )
    drafted_amount: str = Field(description="Total of the drafted invoices (a decimal string, two decimals)")
    other_invoices: int = Field(
        description="The organization's other invoices of this type and period, not linked to this run: issued "
        "or paid ones it left alone, drafts written by another run or by the TentMan app; void ones excluded"
    )
    other_amount: str = Field(description="Total of the other invoices (a decimal string, two decimals)")
    other_statuses: list[str] = Field(description="The statuses of the other invoices, e.g. ['issued', 'paid']")
    # Kept for existing clients with their old meaning; the page shows the fields above.
    amount_billed: str = Field(
        description="Deprecated: drafted_amount + other_amount, the total of every invoice of the organization, "
        "type and period (void excluded), including ones this run did not draft",
        json_schema_extra={"deprecated": True},
    )
    invoices: int = Field(
        description="Deprecated: drafted_invoices + other_invoices, every invoice of the organization, type and "
        "period (void excluded), including ones this run did not draft",
        json_schema_extra={"deprecated": True},
    )
    task_url: str = Field(description="The organization's task instance (and its log) in the Airflow UI")


class RunPage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[Run]


# Organizations: /api/organizations


class Organization(BaseModel):
    id: int
    name: str | None
    is_active: bool | None


# Trends: /api/trends


class MonthInvoices(BaseModel):
    billing_period_start: date
    invoice_type: str
    currency: str = Field(description="ISO 4217 code: each currency has its own rows")
    invoices: int
    amount: str = Field(description="Total of the invoices (void excluded), a decimal string with two decimals")


class MonthFailures(BaseModel):
    billing_period_start: date
    run_type: str
    runs: int
    failed_runs: int
    failure_rate: float
    leases: int
    failed_leases: int


class Duration(BaseModel):
    organization_id: int
    organization_name: str | None
    billing_period_start: date
    run_type: str
    seconds: float


class Trends(BaseModel):
    since: date
    invoices_per_month: list[MonthInvoices]
    failures_per_month: list[MonthFailures]
    durations: list[Duration]


# The preview: /api/preview (its answer is tentman.billing.preview's, per organization)


class PreviewRequest(BaseModel):
    organization_ids: list[int] = Field(min_length=1, max_length=20)
    billing_month: str = Field(pattern=BILLING_MONTH_PATTERN, examples=["2027-01"])
    proration_method: ProrationMethod | None = Field(
        None, description="null: each organization's own method (its billing settings), as a run without one"
    )
    limit: int = Field(100, ge=1, le=500)
    offset: int = Field(0, ge=0)


# Billing settings: /api/organizations/billing-settings, /api/organizations/{organization_id}/billing-settings[/audit]


class LastRun(BaseModel):
    """The organization's latest `invoice_runs` row of one run type."""

    dag_run_id: str
    status: str
    billing_period_start: date
    billing_period_end: date
    proration_method: str | None
    started_at: datetime
    completed_at: datetime | None


class OrganizationBillingSettings(BaseModel):
    organization_id: int
    name: str | None
    is_active: bool | None
    billing_hold: bool
    hold_reason: str | None
    proration_method: str | None = Field(description="The organization's own method; null: the platform default")
    effective_proration_method: str = Field(description="What a rent run without its own method bills it with")
    updated_at: datetime | None = Field(description="null: never changed (the defaults)")
    updated_by: str | None
    last_rent_run: LastRun | None
    last_utility_run: LastRun | None


class BillingSettingsChange(BaseModel):
    """The organization's settings as they should be (all of them: a field left out takes its default)."""

    billing_hold: StrictBool = Field(description="true: runs for all organizations do not bill it")
    hold_reason: str | None = Field(None, description="Required (non-empty) with a hold; cleared without one")
    proration_method: str | None = Field(
        None, description=f"One of {PRORATION_METHODS}; null: the platform default ({DEFAULT_PRORATION_METHOD.value})"
    )


class SettingsChangeResult(BaseModel):
    organization_id: int
    billing_hold: bool
    hold_reason: str | None
    proration_method: str | None
    updated_at: datetime | None
    updated_by: str | None
    changed: bool = Field(description="false: the values were already these; nothing was written")


class AuditEntry(BaseModel):
    id: int
    organization_id: int
    changed_at: datetime
    changed_by: str
    old_billing_hold: bool
    new_billing_hold: bool
    old_hold_reason: str | None
    new_hold_reason: str | None
    old_proration_method: str | None
    new_proration_method: str | None
