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
    # Null by default: each organization is billed with its own method (its billing settings),
    # else the platform default. A method chosen here wins over every organization's own.
    methods = [method.value for method in ProrationMethod]
    default_label = f"Each organization's own (else {DEFAULT_PRORATION_METHOD.value})"
    return Param(
        None,
        type=["null", "string"],
        enum=[None, *methods],
        values_display={"null": default_label, **{m: m for m in methods}},
        title="Proration method",
        description=(
            "How partial months are prorated. Empty: each organization's own method (set on the "
            f"Billing runs page), else {DEFAULT_PRORATION_METHOD.value}. A method chosen here applies to "
            "every organization of the run."
        ),
    )


def dry_run_param() -> Param:
    return Param(False, type="boolean", title="Dry run", description="Compute and report everything, write nothing.")
