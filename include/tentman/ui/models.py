"""The shapes of the page's JSON API (what /tentman/openapi.json documents), apart from its routes."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool

from tentman.billing.leases import LeaseOutcome
from tentman.billing.organization_settings import MAX_HOLD_REASON
from tentman.billing.reconciliation import (
    CHECKS,
    COUNTS,
    HANDS_OFF,
    MAX_IDS,
    RENT_COVERAGE,
    TOTALS,
    UTILITY_COVERAGE,
)
from tentman.billing.schedules import HOURS, ISO_WEEKDAYS, RENT_DAYS
from tentman.names import (
    BILLING_MONTH_PATTERN,
    DEFAULT_PRORATION_METHOD,
    InvoiceStatus,
    LineType,
    ProrationMethod,
    RunStatus,
    RunType,
)

PRORATION_METHODS = ", ".join(m.value for m in ProrationMethod)


# Errors: what a route answers instead of its result (each route's `responses` name the ones it can give).


class Error(BaseModel):
    """A refusal in one sentence, naming what was wrong (and, for a bad value, what is accepted)."""

    detail: str


class FieldError(BaseModel):
    """One value the API's own validation refused."""

    loc: list[str | int] = Field(description="Where the value was: body, query, path or header, then the field")
    msg: str = Field(description="What is accepted")
    type: str
    input: Any = Field(None, description="The value refused")


class InvalidRequest(BaseModel):
    """A value the API refused: a list of every bad value (the API's own validation: types, bounds, patterns), or
    one sentence naming the value and what is accepted (a check that needs the database, or several fields)."""

    detail: list[FieldError] | str


ERROR_RESPONSES: dict[int, dict] = {
    401: {"model": Error, "description": "No credentials, or an expired token: log in to Airflow"},
    403: {
        "model": Error,
        "description": "An invalid token; a role that does not allow this; or a request that changes something "
        "and comes from another site or lacks the X-Requested-By header (tentman.ui.deps)",
    },
    404: {"model": Error, "description": "No such run or organization"},
    415: {"model": Error, "description": "A body that is not JSON (Content-Type other than application/json)"},
    422: {"model": InvalidRequest, "description": "A value out of its bounds, or refused by the billing rules"},
}


def error_responses(*statuses: int) -> dict[int, dict]:
    """The OpenAPI `responses` of these error statuses."""
    return {status: ERROR_RESPONSES[status] for status in statuses}


# Runs: /api/runs, /api/runs/{run_id}


def _json_integer(value: object) -> object:
    """A JSON body's integer as JSON Schema has it (what the OpenAPI document promises): 3 or 3.0, never
    true or false (which Python would take for 1 and 0) nor the string "3"."""
    if isinstance(value, bool | str):
        raise ValueError(f"{value!r} is not an integer; expected a number such as 3")
    return value


JsonInteger = Annotated[int, BeforeValidator(_json_integer)]

# Ids and offsets are PostgreSQL bigints: a larger number is refused here (422 naming the field),
# not by the database (500). The bound is the first number a bigint cannot hold, exclusive: FastAPI's
# OpenAPI document writes bounds as floats, and 2**63 is one exactly (2**63 - 1 would read 2**63).
BIGINT_END = 2**63
DatabaseId = Annotated[JsonInteger, Field(ge=1, lt=BIGINT_END)]


class LeaseError(BaseModel):
    lease_id: int | None = Field(description="The lease, or null for an organization-level error")
    error: str


# What a check's ids are ids of (the page names them).
RECONCILIATION_IDS = {
    RENT_COVERAGE: "lease",
    UTILITY_COVERAGE: "statement",
    TOTALS: "invoice",
    HANDS_OFF: "invoice",
    COUNTS: "invoice run",
}


class ReconciliationCheck(BaseModel):
    """One check of a run's reconciliation (tentman.billing.reconciliation says what each proves)."""

    check: str = Field(description=f"One of {', '.join(CHECKS)}")
    ok: bool
    violations: int = Field(description="How many ids break the check (0 when ok)")
    ids: list[int] = Field(
        description=f"The first {MAX_IDS} offending ids, ascending, of: "
        + ", ".join(f"{kind} ({check})" for check, kind in RECONCILIATION_IDS.items())
    )
    note: str | None = Field(description="Why the check could not be made (then ok), e.g. no run window recorded")


class RunReconciliation(BaseModel):
    """The verdict stored for the run after it (tentman_billing.run_reconciliations), or by `tentman runs
    reconcile` since."""

    ok: bool = Field(description="true: every check passed; false: at least one check found violations")
    checked_at: datetime
    checks: list[ReconciliationCheck] = Field(description="Every check of the run's type, in the order run")


class RunCounts(BaseModel):
    """An organization's outcome as an `invoice_runs` row records it: of a run, or of a preview of one."""

    organization_id: int
    status: RunStatus
    total_leases: int
    success_count: int
    skipped_count: int
    failure_count: int
    errors: list[LeaseError]


class Run(RunCounts):
    """One organization's part of one DAG run (a row of `invoice_runs`)."""

    id: int
    dag_id: str
    dag_run_id: str
    organization_name: str | None
    run_type: RunType
    billing_period_start: date
    billing_period_end: date
    proration_method: str | None
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
    reconciliation: RunReconciliation | None = Field(
        description="The run's reconciliation; null: not reconciled (a failed, on_hold or dry run, a run of an "
        "earlier release, or one whose reconciliation has not run yet)"
    )


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
    # A field the API does not know is refused (422 naming it), not ignored: a misspelt one would silently not apply.
    model_config = ConfigDict(extra="forbid")

    organization_ids: list[DatabaseId] = Field(min_length=1, max_length=20)
    billing_month: str = Field(pattern=BILLING_MONTH_PATTERN, examples=["2027-01"])
    proration_method: ProrationMethod | None = Field(
        None, description="null: each organization's own method (its billing settings), as a run without one"
    )
    limit: JsonInteger = Field(100, ge=1, le=500)
    offset: JsonInteger = Field(0, ge=0, lt=BIGINT_END)


class PreviewLine(BaseModel):
    """An invoice line: one the run would write, or one of the current draft."""

    line_type: LineType
    source_id: int = Field(description="The lease (rent) or recurring charge the line bills")
    description: str | None
    service_period_start: date | None
    service_period_end: date | None
    amount: str = Field(description="A decimal string, two decimals")


class PreviewChange(PreviewLine):
    """A line added, removed or changed between the current draft and the preview."""

    change: Literal["added", "removed", "changed"]
    previous_amount: str | None = Field(None, description="changed: the current draft's amount")


class CurrentInvoice(BaseModel):
    invoice_id: int
    status: InvoiceStatus
    total: str = Field(description="A decimal string, two decimals")


class LeasePreview(BaseModel):
    """One lease: what the run would bill it, beside its current invoice of the period."""

    lease_id: int
    unit_label: str | None
    outcome: LeaseOutcome
    error: str | None = Field(description="Why the lease would not be billed (outcome failed)")
    lines: list[PreviewLine] = Field(description="Empty when the run would leave the lease alone")
    total: str | None = Field(description="null when the run would leave the lease alone (failed, or not a draft)")
    current: CurrentInvoice | None = Field(description="The lease's invoice of the period now; null: none")
    current_lines: list[PreviewLine]
    changes: list[PreviewChange]
    difference: str | None = Field(description="total minus the current invoice's total (total without one)")


class PreviewSummary(RunCounts):
    """What the run would record for the organization (an `invoice_runs` row's counts)."""

    invoices_created: int
    invoices_updated: int
    invoices_unchanged: int
    stale_drafts_removed: int
    statements_billed: int
    amount_billed: str = Field(description="A decimal string, two decimals")


class OrganizationPreview(BaseModel):
    organization_id: int
    billing_period_start: date
    billing_period_end: date
    proration_method: ProrationMethod
    summary: PreviewSummary
    limit: int
    offset: int
    leases: list[LeasePreview] = Field(description="A page of the organization's leases (limit, offset)")


class Preview(BaseModel):
    organizations: list[OrganizationPreview] = Field(description="In the order of the request's organization_ids")


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


class NextRun(BaseModel):
    """When the organization is billed next for one run type: by its own schedule, else the default cron."""

    due_at: datetime = Field(description="UTC")
    local_due_at: datetime = Field(description="The same instant in the organization's time zone (UTC without one)")
    billing_period: str = Field(description="The month it bills, YYYY-MM", examples=["2027-01"])
    schedule: str = Field(
        description="The organization's own schedule in words, or 'default' (the DAG's cron)",
        examples=["day 20 at 06:00 America/New_York", "Monday at 07:00 UTC", "default"],
    )


# The schedule's settings, as the API reads and writes them (tentman.billing.schedules validates them).
TIMEZONE_DESCRIPTION = "An IANA time zone name, e.g. America/New_York; null: UTC"
RENT_DAY_DESCRIPTION = "Day of the month (1 to 28) of the organization's own rent run; null: the default cron"
RENT_HOUR_DESCRIPTION = "Local hour (0 to 23) of its own rent run; set together with rent_schedule_day"
UTILITY_WEEKDAY_DESCRIPTION = "ISO weekday (1 = Monday to 7 = Sunday) of its own utility run; null: the default cron"
UTILITY_HOUR_DESCRIPTION = "Local hour (0 to 23) of its own utility run; set together with utility_schedule_weekday"


def _bounds(accepted: range) -> dict:
    """The JSON Schema bounds of a whole number in `accepted` (null passes them: they apply to numbers only)."""
    return {"minimum": accepted.start, "maximum": accepted.stop - 1}


class OrganizationBillingSettings(BaseModel):
    organization_id: int
    name: str | None
    is_active: bool | None
    billing_hold: bool
    hold_reason: str | None
    proration_method: str | None = Field(description="The organization's own method; null: the platform default")
    effective_proration_method: str = Field(description="What a rent run without its own method bills it with")
    timezone: str | None = Field(description=TIMEZONE_DESCRIPTION)
    rent_schedule_day: int | None = Field(description=RENT_DAY_DESCRIPTION)
    rent_schedule_hour: int | None = Field(description=RENT_HOUR_DESCRIPTION)
    utility_schedule_weekday: int | None = Field(description=UTILITY_WEEKDAY_DESCRIPTION)
    utility_schedule_hour: int | None = Field(description=UTILITY_HOUR_DESCRIPTION)
    updated_at: datetime | None = Field(description="null: never changed (the defaults)")
    updated_by: str | None
    last_rent_run: LastRun | None
    last_utility_run: LastRun | None
    next_rent_run: NextRun | None = Field(
        description="null: not billed by a schedule (an inactive organization, or a default cron set to manual), "
        "or a stored time zone this server does not know"
    )
    next_utility_run: NextRun | None = Field(description="As next_rent_run, for the utility run")


class BillingSettingsChange(BaseModel):
    """The organization's settings as they should be. The hold, its reason and the method are always set (one
    left out takes its default); a schedule field left out keeps its stored value, one sent as null clears it."""

    # A field the API does not know is refused (422 naming it), not ignored: a misspelt one would silently not apply.
    model_config = ConfigDict(extra="forbid")

    billing_hold: StrictBool = Field(description="true: runs for all organizations do not bill it")
    hold_reason: str | None = Field(
        None, description=f"Required with a hold: text of 1 to {MAX_HOLD_REASON} characters; cleared without one"
    )
    # The method, the ranges and the pairs are checked by the engine, whose refusal names the field, the value and
    # what is accepted; the document states the same method names and ranges (tentman.billing.schedules).
    proration_method: str | None = Field(
        None,
        description=f"One of {PRORATION_METHODS}; null: the platform default ({DEFAULT_PRORATION_METHOD.value})",
        json_schema_extra={"enum": [*(m.value for m in ProrationMethod), None]},
    )
    timezone: str | None = Field(None, description=f"{TIMEZONE_DESCRIPTION}. Left out: unchanged")
    rent_schedule_day: JsonInteger | None = Field(
        None, description=f"{RENT_DAY_DESCRIPTION}. Left out: unchanged", json_schema_extra=_bounds(RENT_DAYS)
    )
    rent_schedule_hour: JsonInteger | None = Field(
        None, description=f"{RENT_HOUR_DESCRIPTION}. Left out: unchanged", json_schema_extra=_bounds(HOURS)
    )
    utility_schedule_weekday: JsonInteger | None = Field(
        None, description=f"{UTILITY_WEEKDAY_DESCRIPTION}. Left out: unchanged", json_schema_extra=_bounds(ISO_WEEKDAYS)
    )
    utility_schedule_hour: JsonInteger | None = Field(
        None, description=f"{UTILITY_HOUR_DESCRIPTION}. Left out: unchanged", json_schema_extra=_bounds(HOURS)
    )


class SettingsChangeResult(BaseModel):
    organization_id: int
    billing_hold: bool
    hold_reason: str | None
    proration_method: str | None
    timezone: str | None
    rent_schedule_day: int | None
    rent_schedule_hour: int | None
    utility_schedule_weekday: int | None
    utility_schedule_hour: int | None
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
    old_timezone: str | None
    new_timezone: str | None
    old_rent_schedule_day: int | None
    new_rent_schedule_day: int | None
    old_rent_schedule_hour: int | None
    new_rent_schedule_hour: int | None
    old_utility_schedule_weekday: int | None
    new_utility_schedule_weekday: int | None
    old_utility_schedule_hour: int | None
    new_utility_schedule_hour: int | None


# The schedule: /api/schedule


class ScheduledRun(BaseModel):
    """One billing run due in the window: a default cron's tick, or one organization's own due time."""

    run_type: RunType
    due_at: datetime = Field(description="UTC")
    billing_period: str = Field(description="The month it bills, YYYY-MM", examples=["2027-01"])
    source: Literal["default", "organization"] = Field(
        description="default: a tick of the DAG's cron (every organization without its own schedule); "
        "organization: one organization's own due time"
    )
    organizations: int | None = Field(
        None,
        description="default ticks: the active organizations it will bill as of now (no own schedule for that "
        "run type, not on hold)",
    )
    cron: str | None = Field(None, description="default ticks: the DAG's cron (UTC)")
    organization_id: int | None = None
    name: str | None = None
    timezone: str | None = Field(None, description="The organization's time zone (UTC when it has none)")
    local_due_at: datetime | None = Field(None, description="The due time in the organization's time zone")
    schedule: str | None = Field(None, description="The organization's own schedule in words")
    billing_hold: bool | None = Field(None, description="The organization is on hold: its run writes on_hold")


class Schedule(BaseModel):
    start: datetime = Field(description="UTC: now")
    end: datetime = Field(description="UTC: `days` days later")
    days: int
    default_schedules: dict[str, str | None] = Field(
        description="Each run type's default cron (UTC); null: manual, it has no ticks"
    )
    runs: list[ScheduledRun] = Field(description="In time order (default ticks before organizations at one instant)")
