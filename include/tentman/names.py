"""One home for every name the billing bundle shares with itself and with other TentMan services.

DAG and task ids, the values billing writes into the application's tables (run types and
statuses, invoice types and statuses, line types), proration method names, the billing-month
format and how an organization is labelled. Other services and our acceptance checks rely on these exact values.
Imported when DAG files are parsed: standard library only.
"""

from __future__ import annotations

import enum

RENT_DAG_ID = "tentman_monthly_rent_generation"
UTILITY_DAG_ID = "tentman_utility_billing"
# Bills the organizations that bill on a schedule of their own (tentman.billing.schedules), hourly.
SCHEDULES_DAG_ID = "tentman_organization_schedules"
DAG_IDS = (RENT_DAG_ID, UTILITY_DAG_ID, SCHEDULES_DAG_ID)

# The PostgreSQL schema holding everything that is the bundle's own (its migration version table,
# the organizations' billing settings and their audit, the proration function). The application's
# tables stay where the application keeps them (found on the connection's search_path).
BILLING_SCHEMA = "tentman_billing"
BILLING_SETTINGS_TABLE = f"{BILLING_SCHEMA}.organization_billing_settings"
BILLING_SETTINGS_AUDIT_TABLE = f"{BILLING_SCHEMA}.organization_billing_settings_audit"
PRORATE_FUNCTION = f"{BILLING_SCHEMA}.tentman_prorate"
# Which organization was billed, on its own schedule, for which period (tentman.runs.schedules).
SCHEDULE_CLAIMS_TABLE = f"{BILLING_SCHEMA}.organization_schedule_claims"
# Each organization's part of each run, reconciled after it (tentman.billing.reconciliation).
RECONCILIATIONS_TABLE = f"{BILLING_SCHEMA}.run_reconciliations"

# The task ids of both DAGs, in the order they run. Alerts, the page, the benchmarks and the tests
# find the tasks by these ids; the operators and the REST API show them.
RESOLVE_PERIOD_TASK = "resolve_billing_period"
LIST_ORGANIZATIONS_TASK = "list_organizations"
BILL_ORGANIZATION_TASK = "bill_organization"
RECORD_RUNS_TASK = "record_invoice_runs"
RECONCILE_TASK = "reconcile_invoice_runs"
TASK_IDS = (RESOLVE_PERIOD_TASK, LIST_ORGANIZATIONS_TASK, BILL_ORGANIZATION_TASK, RECORD_RUNS_TASK, RECONCILE_TASK)


# The values billing writes into the application's CHECK-constrained text columns. The CHECK lists
# of the application's tables (tentman.application_schema) are built from these, and
# tests/test_names.py reads them back from the database, so the code and the database cannot drift.
class RunType(enum.StrEnum):
    """`invoice_runs.run_type`: which DAG wrote the run."""

    MONTHLY_RENT = "monthly_rent"
    UTILITY = "utility"


class RunStatus(enum.StrEnum):
    """`invoice_runs.status`: how one organization's part of a run ended (or that it is running)."""

    RUNNING = "running"
    COMPLETED = "completed"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    FAILED = "failed"
    # The organization is on billing hold: the run did not bill it.
    ON_HOLD = "on_hold"


class InvoiceType(enum.StrEnum):
    """`invoices.invoice_type`."""

    RENT = "rent"
    UTILITY = "utility"


class InvoiceStatus(enum.StrEnum):
    """`invoices.status`. Billing writes and rewrites drafts only; the others are the application's."""

    DRAFT = "draft"
    ISSUED = "issued"
    PAID = "paid"
    VOID = "void"


class LineType(enum.StrEnum):
    """`invoice_lines.line_type`."""

    RENT = "rent"
    RECURRING_CHARGE = "recurring_charge"
    UTILITY = "utility"


# The invoice type a run of each type writes.
INVOICE_TYPE_OF_RUN = {RunType.MONTHLY_RENT: InvoiceType.RENT, RunType.UTILITY: InvoiceType.UTILITY}
RUN_TYPE_OF_DAG = {RENT_DAG_ID: RunType.MONTHLY_RENT, UTILITY_DAG_ID: RunType.UTILITY}


def invoice_type_sql(run_type_column: str) -> str:
    """SQL expression: the invoice type written by the run type in `run_type_column`."""
    whens = " ".join(f"WHEN '{run}' THEN '{invoice}'" for run, invoice in INVOICE_TYPE_OF_RUN.items())
    return f"(CASE {run_type_column} {whens} END)"


# The application_name of a preview's transactions (the "Billing runs" page): a real billing run
# that finds an organization's lock held by a session of this name ends that session
# (tentman.billing.locking), so a preview never holds billing up.
PREVIEW_APPLICATION_NAME = "tentman-preview"

# A billing month as the DAG params, the page and its API take it.
BILLING_MONTH_FORMAT = "YYYY-MM"
# Years 1900 to 9999 (what BillingPeriod.parse accepts): a form or an API call outside them is
# refused by its own validation, naming the field, not by a failure deep in parsing.
BILLING_MONTH_PATTERN = r"^(19[0-9]{2}|[2-9][0-9]{3})-(0[1-9]|1[0-2])$"


class ProrationMethod(enum.StrEnum):
    """How a partial month is billed: the SQL function PRORATE_FUNCTION (migration 0005) applies it."""

    ACTUAL_DAYS_IN_MONTH = "ActualDaysInMonth"
    THIRTY_DAY_MONTH = "ThirtyDayMonth"
    ANNUAL_365 = "Annual365"
    NO_PRORATION = "NoProration"

    @classmethod
    def parse(cls, value: object) -> ProrationMethod:
        """The method named `value` (None: the platform default); a ValueError names a bad one."""
        if value is None:
            return DEFAULT_PRORATION_METHOD
        for method in cls:
            if value == method.value:
                return method
        accepted = ", ".join(m.value for m in cls)
        raise ValueError(f"proration_method {value!r} is not supported; expected one of {accepted}")


DEFAULT_PRORATION_METHOD = ProrationMethod.ACTUAL_DAYS_IN_MONTH


def organization_label(name: str | None, organization_id: int) -> str:
    """How an organization is shown in task labels, logs and alerts: "Acme Homes (#3)"."""
    return f"{name or 'organization'} (#{organization_id})"


# --- Added on branch `engines`: the application's statuses of a utility statement, which billing reads
# (its engine bills finalized statements; the contract's pending-statements index names the same value).
class StatementStatus(enum.StrEnum):
    """`utility_statements.status`, the application's: billing bills the finalized statements."""

    DRAFT = "draft"
    FINALIZED = "finalized"
