"""Builds the billing DAGs: resolve period → list organizations → bill each (mapped) → record runs.

Imported by the DAG files at parse time, so only `airflow.sdk`, pendulum and this package's cheap
modules (names, settings, alerts) are imported at module level; each task imports the step it
runs (a module of tentman.runs, and through it SQLAlchemy, psycopg and the engines) when it runs.

The task functions are named `*_task` so that they are not mistaken for the steps they call.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from tentman.names import (
    BILL_ORGANIZATION_TASK,
    LIST_ORGANIZATIONS_TASK,
    RECONCILE_TASK,
    RECORD_RUNS_TASK,
    RESOLVE_PERIOD_TASK,
    RunType,
)
from tentman.orchestration.alerts import AlreadyAlerted, BillingFailureNotifier
from tentman.settings import PRIORITY_WEIGHT_RULE, OrganizationTaskPolicy, organization_task_policy, priority_weight

log = logging.getLogger(__name__)

TAGS = ["tentman", "billing"]
# Every task's defaults: a few quick retries for a database that blinks. The run-level steps bill
# nothing themselves; the organization tasks override these with their own policy (settings).
DEFAULT_ARGS = {"owner": "billing", "retries": 3, "retry_delay": timedelta(seconds=30)}


def _tentman_engine():
    from tentman.orchestration.connection import airflow_tentman_engine

    return airflow_tentman_engine()


# multiple_outputs=False on the tasks returning a dict: TaskFlow would otherwise infer it from
# the `-> dict` annotation and push one extra XCom per key — 15 more API calls per organization
# task, about half of Airflow's per-task cost at 2,000 organizations.
@task(
    task_id=RESOLVE_PERIOD_TASK,
    task_display_name="Resolve billing period",
    multiple_outputs=False,
)
def resolve_billing_period_task(run_type: str) -> dict:
    from tentman.migrate import SchemaNotReady
    from tentman.runs.resolve import resolve_billing_period

    context = get_current_context()
    dag_run = context["dag_run"]
    try:
        run = resolve_billing_period(
            _tentman_engine(),
            run_type=run_type,
            params=dict(context["params"]),
            logical_date=context.get("logical_date"),
            run_after=dag_run.run_after,
            scheduled=str(dag_run.run_type).endswith("scheduled"),
            started_at=dag_run.start_date,
        )
    except ValueError as exc:
        # A bad parameter will not get better by retrying: fail now, nothing written.
        raise AirflowFailException(f"Invalid run parameters: {exc}") from exc
    except SchemaNotReady as exc:
        # Neither will a schema nobody migrated: say what to run, at once.
        raise AirflowFailException(f"TentMan schema not ready: {exc}") from exc
    return run.to_dict()


@task(task_id=LIST_ORGANIZATIONS_TASK, task_display_name="List organizations")
def list_organizations_task(run: dict) -> list[int]:

    from tentman.runs.billing_run import BillingRun
    from tentman.runs.organizations import list_organizations

    organizations = list_organizations(_tentman_engine(), BillingRun.from_dict(run))
    _check_map_length(len(organizations))
    return organizations


def _check_map_length(tasks: int) -> None:
    """Fail the listing at once when Airflow would refuse to map that many organization tasks."""
    from airflow.sdk.configuration import conf

    max_map_length = conf.getint("core", "max_map_length", fallback=1024)
    if tasks > max_map_length:
        # Airflow itself would refuse the list with "pushed value is too large to map", naming neither
        # the setting nor the number; and retrying cannot shrink the list.
        raise AirflowFailException(too_many_organizations_message(tasks, max_map_length))


def too_many_organizations_message(organizations: int, max_map_length: int) -> str:
    return (
        f"{organizations:,} organizations to bill, one mapped task each, but Airflow's [core] max_map_length is "
        f"{max_map_length:,}: set AIRFLOW__CORE__MAX_MAP_LENGTH (or [core] max_map_length) to at least "
        f"{organizations:,} on every Airflow component (the api-server enforces it), restart them, then clear "
        f"this run's {LIST_ORGANIZATIONS_TASK} task. Nothing was billed."
    )


@task(
    task_id=BILL_ORGANIZATION_TASK,
    task_display_name="Bill organization",
    multiple_outputs=False,
    retry_exponential_backoff=2.0,
    map_index_template="{{ organization_label }}",
    # After the last retry only: a retry is not worth waking anyone.
    on_failure_callback=[BillingFailureNotifier()],
)
def bill_organization_task(organization_id: int, run: dict) -> dict:
    import time

    from tentman.names import organization_label
    from tentman.orchestration import metrics
    from tentman.runs.bill import bill_organization, read_organization_to_bill
    from tentman.runs.billing_run import BillingRun

    context = get_current_context()
    # Shown as the mapped instance's label in the UI and in alerts: "Acme Homes (#3)"; the bare
    # "organization (#3)" until the name is read (the database may be what fails).
    context["organization_label"] = organization_label(None, organization_id)
    billing_run = BillingRun.from_dict(run)
    context["billing_period"] = billing_run.period.label  # for the failure alert
    tags = metrics.billing_tags(context["dag"].dag_id, billing_run.run_type, organization_id)
    started = time.monotonic()
    try:  # a failed attempt is counted, the database being down included
        engine = _tentman_engine()
        # Its name and settings in one read: every transaction costs each of 10,000 tasks.
        organization = read_organization_to_bill(engine, organization_id)
        context["organization_label"] = organization.label
        started = time.monotonic()
        result = bill_organization(
            engine,
            billing_run,
            organization_id,
            organization=organization,
            dag_id=context["dag"].dag_id,
            dag_run_id=context["run_id"],
        )
    except Exception:
        metrics.emit_organization_failure(tags=tags, engine_seconds=time.monotonic() - started)
        raise
    seconds = time.monotonic() - started
    metrics.emit_organization_result(result, tags=tags, engine_seconds=seconds, dry_run=billing_run.dry_run)
    return result


def _organization_task_settings(policy: OrganizationTaskPolicy) -> dict:
    """Retries, retry delays, concurrency and pool of the organization tasks (from the environment)."""
    return {
        "retries": policy.retries,
        "retry_delay": policy.retry_delay,
        "max_retry_delay": policy.max_retry_delay,
        "max_active_tis_per_dagrun": policy.max_active_organizations,
        "pool": policy.pool,
    }


@task(
    task_id=RECORD_RUNS_TASK,
    task_display_name="Record invoice runs",
    trigger_rule="all_done",
    on_failure_callback=[BillingFailureNotifier()],
)
def record_invoice_runs_task(run: dict | None, organization_ids: list[int] | None, results) -> list[dict]:
    from tentman.runs.billing_run import BillingRun
    from tentman.runs.record import BillingRunFailed, record_invoice_runs

    context = get_current_context()
    try:
        return record_invoice_runs(
            _tentman_engine(),
            BillingRun.from_dict(run) if run else None,
            organization_ids,
            # One slice request for every result: iterating would fetch them one API call each.
            list(results[:]) if results is not None else [],
            dag_id=context["dag"].dag_id,
            dag_run_id=context["run_id"],
        )
    except BillingRunFailed as exc:
        # Fails the DAG run on purpose (an all_done leaf that succeeds would mark it
        # successful); retrying would only repeat the verdict.
        raise AirflowFailException(str(exc)) from exc


@task(
    task_id=RECONCILE_TASK,
    task_display_name="Reconcile invoice runs",
    # After the aggregation whatever it found: the organizations it completed are reconciled even
    # when another failed. No retry: a retry cannot fix data.
    trigger_rule="all_done",
    retries=0,
    on_failure_callback=[BillingFailureNotifier()],
)
def reconcile_invoice_runs_task(summary) -> int:
    from tentman.orchestration import metrics
    from tentman.runs.reconcile import ReconciliationFailed, raise_on_violations, reconcile_dag_run

    context = get_current_context()
    dag_id = context["dag"].dag_id
    engine = _tentman_engine()
    reconciliations = reconcile_dag_run(engine, dag_id=dag_id, dag_run_id=context["run_id"])
    metrics.emit_reconciliation_violations(reconciliations, dag_id=dag_id)
    try:
        raise_on_violations(engine, reconciliations)
    except ReconciliationFailed as exc:
        raise AirflowFailException(str(exc)) from exc
    if summary is None:
        # This task is the run's last: succeeding here would hide the aggregation's failure, which
        # that task alerted already.
        raise AlreadyAlerted(
            f"{RECORD_RUNS_TASK} failed (see its log and alert); the organizations it completed reconcile"
        )
    return len(reconciliations)


@task(task_id=LIST_ORGANIZATIONS_TASK, task_display_name="List due organizations")
def list_due_organizations_task() -> list[dict]:

    from tentman.migrate import SchemaNotReady, check_schema
    from tentman.runs.billing_run import parse_dry_run, parse_organization_ids
    from tentman.runs.schedules import list_scheduled_billings

    context = get_current_context()
    dag_run = context["dag_run"]
    params = dict(context["params"])
    engine = _tentman_engine()
    try:
        organization_ids = parse_organization_ids(params.get("organization_ids"))
        dry_run = parse_dry_run(params.get("dry_run"))
    except ValueError as exc:
        raise AirflowFailException(f"Invalid run parameters: {exc}") from exc
    try:
        for warning in check_schema(engine):
            log.warning("TentMan schema: %s", warning)
    except SchemaNotReady as exc:
        raise AirflowFailException(f"TentMan schema not ready: {exc}") from exc
    billings = list_scheduled_billings(
        engine,
        # The tick it stands for: a backfill's and a late run's logical date; a manual run has none.
        tick=context.get("logical_date") or dag_run.run_after,
        dag_id=context["dag"].dag_id,
        dag_run_id=context["run_id"],
        organization_ids=organization_ids,
        dry_run=dry_run,
    )
    _check_map_length(len(billings))
    return [billing.to_dict() for billing in billings]


@task(
    task_id=RECORD_RUNS_TASK,
    task_display_name="Record invoice runs",
    trigger_rule="all_done",
    on_failure_callback=[BillingFailureNotifier()],
)
def record_scheduled_invoice_runs_task(billings: list[dict] | None, results) -> list[dict]:
    from tentman.runs.record import BillingRunFailed
    from tentman.runs.schedules import ScheduledBilling, record_scheduled_billings

    context = get_current_context()
    try:
        return record_scheduled_billings(
            _tentman_engine(),
            [ScheduledBilling.from_dict(b) for b in billings] if billings is not None else None,
            list(results[:]) if results is not None else [],
            dag_id=context["dag"].dag_id,
            dag_run_id=context["run_id"],
        )
    except BillingRunFailed as exc:
        raise AirflowFailException(str(exc)) from exc


CRON_WEEKDAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")


def schedule_in_words(schedule: str | None) -> str:
    """How a DAG's doc states its schedule, read from the one that runs: an hourly, monthly or weekly
    cron in words (with the cron), any other cron as it is; all in UTC."""
    if schedule is None:
        return "only when triggered (no schedule)"
    fields = schedule.split()
    if len(fields) == 5 and fields[0].isdigit() and fields[1:] == ["*"] * 4:
        minute = int(fields[0])
        return f"every hour {'on the hour' if minute == 0 else f'at minute {minute}'} (cron `{schedule}`)"
    if len(fields) == 5 and fields[0].isdigit() and fields[1].isdigit():
        minute, hour, day, month, weekday = fields
        at = f"at {int(hour):02d}:{int(minute):02d} UTC"
        if day.isdigit() and (month, weekday) == ("*", "*"):
            return f"{at} on day {int(day)} of every month (cron `{schedule}`)"
        if weekday.isdigit() and (day, month) == ("*", "*"):
            return f"{at} every {CRON_WEEKDAYS[int(weekday) % 7]} (cron `{schedule}`)"
    return f"on the cron schedule `{schedule}` (UTC)"


def _billing_dag_frame(*, dag_id: str, schedule: str | None, params: dict, doc_md: str, tags: list[str], weight: int):
    """What every billing DAG shares: no catch-up, one run at a time (a schedules tick's claims are
    settled before the next one looks), and every task, the organization tasks included, waiting in
    the queue with its DAG's weight (settings.priority_weight)."""
    return DAG(
        dag_id=dag_id,
        schedule=schedule,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        tags=TAGS + tags,
        doc_md=doc_md,
        params=params,
        default_args={**DEFAULT_ARGS, "priority_weight": weight, "weight_rule": PRIORITY_WEIGHT_RULE},
    )


def _organization_tasks(bill_organization=bill_organization_task):
    return bill_organization.override(**_organization_task_settings(organization_task_policy()))


def same_task(decorated, function):
    """The task `decorated` declares (its id, name, retries, trigger rule, callbacks, mapping label)
    running `function` instead of its own body."""
    return task(**decorated.kwargs, multiple_outputs=decorated.multiple_outputs)(function)


@dataclasses.dataclass(frozen=True)
class BillingTasks:
    """The steps of a run-type billing DAG, by role. The benchmark's control DAG is this DAG with
    other bodies (`with_bodies`): the same frame, settings and graph, nothing billed."""

    resolve_period: object
    list_organizations: object
    bill_organization: object
    record_runs: object
    reconcile: object

    def with_bodies(self, **functions) -> BillingTasks:
        """These tasks, those named (by role) running the given functions (same signatures)."""
        return dataclasses.replace(self, **{role: same_task(getattr(self, role), f) for role, f in functions.items()})


BILLING_TASKS = BillingTasks(
    resolve_period=resolve_billing_period_task,
    list_organizations=list_organizations_task,
    bill_organization=bill_organization_task,
    record_runs=record_invoice_runs_task,
    reconcile=reconcile_invoice_runs_task,
)


def build_billing_dag(
    *,
    dag_id: str,
    run_type: str,
    schedule: str | None,
    params: dict[str, Param],
    doc_md: str,
    tags: list[str],
    tasks: BillingTasks = BILLING_TASKS,
) -> DAG:
    frame = _billing_dag_frame(
        dag_id=dag_id, schedule=schedule, params=params, doc_md=doc_md, tags=tags, weight=priority_weight(run_type)
    )
    with frame as dag:
        run = tasks.resolve_period(run_type)
        organization_ids = tasks.list_organizations(run)
        results = _organization_tasks(tasks.bill_organization).partial(run=run).expand(organization_id=organization_ids)
        tasks.reconcile(tasks.record_runs(run, organization_ids, results))
    return dag


def build_schedules_dag(*, dag_id: str, schedule: str | None, params: dict[str, Param], doc_md: str) -> DAG:
    """The organization schedules DAG: list the organizations due at the tick → bill each (mapped,
    each with its own run type and period) → record their runs."""
    # An organization's own schedule is rent's or utility's: the higher of the two weights.
    weight = max(priority_weight(t) for t in (RunType.MONTHLY_RENT, RunType.UTILITY))
    frame = _billing_dag_frame(
        dag_id=dag_id, schedule=schedule, params=params, doc_md=doc_md, tags=["schedules"], weight=weight
    )
    with frame as dag:
        billings = list_due_organizations_task()
        # Each organization with its own run (type and period): expand_kwargs, not expand.
        results = _organization_tasks().expand_kwargs(billings)
        reconcile_invoice_runs_task(record_scheduled_invoice_runs_task(billings, results))
    return dag
