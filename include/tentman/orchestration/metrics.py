"""Billing metrics of the organization tasks, sent through Airflow's metrics API.

Airflow's `[metrics]` settings choose the backend (StatsD, DogStatsD or OpenTelemetry) for its own
metrics and for these alike; with none turned on, every call here is a no-op. The task process
initialises that backend before the task runs (airflow.sdk.execution_time.task_runner.main).

One definition of the names: `METRICS` below. The StatsD exporter's mapping
(deploy/monitoring/statsd-mapping.yml), the Grafana dashboard and the Prometheus alert rules are
tested against it (tests/test_deployment.py), and the live test reads the lines a real task sent.

Tags, on every metric: `dag_id` (Airflow's own tag name, so both join), `run_type` (TentMan's, as
in `invoice_runs.run_type`: monthly_rent or utility) and `organization_id`. The id, not the name:
it never changes when an organization is renamed, needs no escaping in a StatsD line or a
Prometheus label, and reveals nothing about a customer. At 10,000 organizations that is 10,000
series per metric and run type (about 200,000 in all, histogram buckets aside): fine for
Prometheus, which is why the dashboard aggregates by `run_type` and shows organizations only as a
top-k.

Imported only inside the task function: never at DAG-parse time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal

log = logging.getLogger(__name__)

PREFIX = "tentman"
# The tags every billing metric carries, in the order they are sent.
TAGS = ("dag_id", "run_type", "organization_id")


@dataclass(frozen=True)
class Metric:
    """One billing metric: its name in Airflow's metrics API (before [metrics] statsd_prefix)."""

    name: str
    kind: str  # "counter" or "timer"
    description: str
    result_key: str | None = None  # the key of bill_organization's result it counts, if any


LEASES_BILLED = Metric(f"{PREFIX}.leases_billed", "counter", "Leases billed (drafted or unchanged)", "success_count")
LEASES_SKIPPED = Metric(f"{PREFIX}.leases_skipped", "counter", "Leases skipped (invoice issued)", "skipped_count")
LEASES_FAILED = Metric(f"{PREFIX}.leases_failed", "counter", "Leases not billed because of an error", "failure_count")
INVOICES_CREATED = Metric(f"{PREFIX}.invoices_created", "counter", "Draft invoices created", "invoices_created")
INVOICES_UPDATED = Metric(f"{PREFIX}.invoices_updated", "counter", "Draft invoices updated", "invoices_updated")
INVOICES_REMOVED = Metric(
    f"{PREFIX}.invoices_removed", "counter", "Stale draft invoices removed", "stale_drafts_removed"
)
STATEMENTS_BILLED = Metric(f"{PREFIX}.statements_billed", "counter", "Utility statements billed", "statements_billed")
# A counter, not a gauge: amounts add up across organizations and runs, so any window (a run, a
# month) and any tag can be summed; a gauge keeps one last value per series and loses a run that
# another replaces before the next scrape. Sent in currency units with the cents (StatsD carries
# decimals; Prometheus adds them as float64, exact to the cent far beyond any monthly total).
AMOUNT_DRAFTED = Metric(f"{PREFIX}.amount_drafted", "counter", "Amount drafted, in currency units", "amount_billed")
# One per organization and run, like its `invoice_runs` row, tagged with that row's status.
INVOICE_RUNS = Metric(f"{PREFIX}.invoice_runs", "counter", "Organizations billed, extra tag: the run row's status")
ORGANIZATION_FAILURES = Metric(
    f"{PREFIX}.organization_failures",
    "counter",
    "Failed attempts to bill an organization (each try; Airflow retries it)",
)
ENGINE_DURATION = Metric(
    f"{PREFIX}.engine_duration", "timer", "Time of the bill_organization call (engine and its transaction)"
)

# One per organization, run and failing check, counting its offending ids (extra tag: `check`).
RECONCILIATION_VIOLATIONS = Metric(
    f"{PREFIX}.reconciliation_violations",
    "counter",
    "Violations the reconciliation after a run found, extra tag: the check",
)

METRICS: tuple[Metric, ...] = (
    LEASES_BILLED,
    LEASES_SKIPPED,
    LEASES_FAILED,
    INVOICES_CREATED,
    INVOICES_UPDATED,
    INVOICES_REMOVED,
    STATEMENTS_BILLED,
    AMOUNT_DRAFTED,
    INVOICE_RUNS,
    ORGANIZATION_FAILURES,
    ENGINE_DURATION,
    RECONCILIATION_VIOLATIONS,
)


def billing_tags(dag_id: str, run_type: str, organization_id: int) -> dict[str, str]:
    return dict(zip(TAGS, (dag_id, run_type, str(int(organization_id))), strict=True))


def emit_organization_result(result: dict, *, tags: dict[str, str], engine_seconds: float, dry_run: bool) -> None:
    """The metrics of one billed organization, from bill_organization's result.

    A dry run drafts nothing and sends nothing: its counts would read as billed. A failure to
    send is logged and never fails billing.
    """
    if dry_run:
        return
    try:
        from airflow.sdk.observability import stats

        for metric in METRICS:
            if metric.result_key is None or metric.result_key not in result:
                continue
            value = result[metric.result_key]
            if metric is AMOUNT_DRAFTED:
                # The double nearest the amount in cents prints as those cents ("29703.23"), and
                # StatsD sends str(value).
                stats.incr(metric.name, float(Decimal(str(value)).quantize(Decimal("0.01"))), tags=tags)
            else:
                stats.incr(metric.name, int(value), tags=tags)
        stats.incr(INVOICE_RUNS.name, 1, tags={**tags, "status": str(result.get("status"))})
        stats.timing(ENGINE_DURATION.name, engine_seconds * 1000.0, tags=tags)
    except Exception:
        log.warning("Could not send the billing metrics of %s", tags, exc_info=True)


def emit_organization_failure(*, tags: dict[str, str], engine_seconds: float) -> None:
    """One failed attempt to bill an organization (the task raises; Airflow retries it)."""
    try:
        from airflow.sdk.observability import stats

        stats.incr(ORGANIZATION_FAILURES.name, 1, tags=tags)
        stats.timing(ENGINE_DURATION.name, engine_seconds * 1000.0, tags=tags)
    except Exception:
        log.warning("Could not send the billing failure metric of %s", tags, exc_info=True)


def emit_reconciliation_violations(reconciliations, *, dag_id: str) -> None:
    """`tentman.reconciliation_violations` for each failing check of each reconciled organization."""
    try:
        from airflow.sdk.observability import stats

        for reconciliation in reconciliations:
            tags = billing_tags(dag_id, reconciliation.run_type, reconciliation.organization_id)
            for check in reconciliation.violations:
                stats.incr(RECONCILIATION_VIOLATIONS.name, check.violations, tags={**tags, "check": check.check})
    except Exception:
        log.warning("Could not send the reconciliation metrics of %s", dag_id, exc_info=True)
