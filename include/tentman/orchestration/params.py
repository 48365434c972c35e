"""The billing DAGs' params, as the trigger form shows them. Imported at DAG-parse time."""

from __future__ import annotations

from airflow.sdk import Param

from tentman.names import BILLING_MONTH_FORMAT, BILLING_MONTH_PATTERN, DEFAULT_PRORATION_METHOD, ProrationMethod


def billing_month_param(default_description: str) -> Param:
    return Param(
        None,
        type=["null", "string"],
        pattern=BILLING_MONTH_PATTERN,
        title="Billing month",
        description=f"Month to bill as {BILLING_MONTH_FORMAT}. Empty: {default_description}.",
    )


def organization_ids_param() -> Param:
    return Param(
        None,
        type=["null", "array"],
        items={"type": "integer"},
        minItems=1,
        title="Organization ids",
        description="Ids of the organizations to bill. Empty: every active organization.",
    )


def proration_method_param() -> Param:
    return Param(
        DEFAULT_PRORATION_METHOD.value,
        type="string",
        enum=[method.value for method in ProrationMethod],
        title="Proration method",
        description="How partial months are prorated.",
    )


def dry_run_param() -> Param:
    return Param(False, type="boolean", title="Dry run", description="Compute and report everything, write nothing.")
