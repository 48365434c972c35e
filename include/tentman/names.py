"""One home for every name the billing bundle shares with itself and with other TentMan services.

DAG ids, run and invoice types, proration method names, the billing-month format and how an
organization is labelled. Other services and our acceptance checks rely on these exact values.
Imported when DAG files are parsed: standard library only.
"""

from __future__ import annotations

import enum

RENT_DAG_ID = "tentman_monthly_rent_generation"
UTILITY_DAG_ID = "tentman_utility_billing"
DAG_IDS = (RENT_DAG_ID, UTILITY_DAG_ID)

# The PostgreSQL schema holding everything that is the bundle's own (its migration version table,
# the organizations' billing settings and their audit, the proration function). The application's
# tables stay where the application keeps them (found on the connection's search_path).
BILLING_SCHEMA = "tentman_billing"
BILLING_SETTINGS_TABLE = f"{BILLING_SCHEMA}.organization_billing_settings"
BILLING_SETTINGS_AUDIT_TABLE = f"{BILLING_SCHEMA}.organization_billing_settings_audit"
PRORATE_FUNCTION = f"{BILLING_SCHEMA}.tentman_prorate"

# `invoice_runs.run_type` of each DAG, and the `invoices.invoice_type` a run of that type writes.
RENT_RUN = "monthly_rent"
UTILITY_RUN = "utility"
RUN_TYPES = (RENT_RUN, UTILITY_RUN)
RENT_INVOICE = "rent"
UTILITY_INVOICE = "utility"
INVOICE_TYPE_OF_RUN = {RENT_RUN: RENT_INVOICE, UTILITY_RUN: UTILITY_INVOICE}
RUN_TYPE_OF_DAG = {RENT_DAG_ID: RENT_RUN, UTILITY_DAG_ID: UTILITY_RUN}

# `invoice_runs.status` values. ON_HOLD: the organization is on billing hold and the run did not bill it.
ON_HOLD = "on_hold"
RUN_STATUSES = ("running", "completed", "completed_with_errors", "failed", ON_HOLD)


def invoice_type_sql(run_type_column: str) -> str:
    """SQL expression: the invoice type written by the run type in `run_type_column`."""
    whens = " ".join(f"WHEN '{run}' THEN '{invoice}'" for run, invoice in INVOICE_TYPE_OF_RUN.items())
    return f"(CASE {run_type_column} {whens} END)"


# A billing month as the DAG params, the page and its API take it.
BILLING_MONTH_FORMAT = "YYYY-MM"
BILLING_MONTH_PATTERN = r"^[0-9]{4}-(0[1-9]|1[0-2])$"


class ProrationMethod(enum.StrEnum):
    """How a partial month is billed (the rules are in tentman.billing.proration)."""

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
