"""Builds the billing DAGs: resolve period → list organizations → bill each (mapped) → record runs.

Imported by the DAG files at parse time, so only `airflow.sdk` and `tentman.settings` are imported
at module level; the billing code (SQLAlchemy, the provider hook) is imported inside the tasks.
"""

from __future__ import annotations

from datetime import datetime, timezone

from datetime import timedelta

from airflow.sdk import DAG, Param, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from tentman.alerts import BillingFailureNotifier
from tentman.settings import organization_task_policy

TAGS = ["tentman", "billing"]


def billing_month_param(default_description: str) -> Param:
    return Param(
        None,
        type=["null", "string"],
        pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$",
        title="Billing month",
        description=f"Month to bill as YYYY-MM. Empty: {default_description}.",
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


def dry_run_param() -> Param:
    return Param(False, type="boolean", title="Dry run", description="Compute and report everything, write nothing.")


def _engine():
    from tentman.db import airflow_tentman_engine

    return airflow_tentman_engine()


def build_billing_dag(
    *, dag_id: str, run_type: str, schedule: str | None, params: dict, doc_md: str, tags: list[str]
) -> DAG:
    policy = organization_task_policy()
    with DAG(
        dag_id=dag_id,
        schedule=schedule,
        start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
        catchup=False,
        max_active_runs=1,
        tags=TAGS + tags,
        doc_md=doc_md,
        params=params,
        default_args={"owner": "billing"},
    ) as dag:

        # multiple_outputs=False on the tasks returning a dict: TaskFlow would otherwise infer it from
        # the `-> dict` annotation and push one extra XCom per key — 15 more API calls per
        # organization task, about half of Airflow's per-task cost at 2,000 organizations.
        @task(task_id="resolve_billing_period", retries=3, retry_delay=timedelta(seconds=30), multiple_outputs=False)
        def resolve_billing_period() -> dict:
            from tentman.pipeline import resolve_billing_run

            context = get_current_context()
            dag_run = context["dag_run"]
            try:
                run = resolve_billing_run(
                    _engine(),
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
            return run.to_dict()

        @task(task_id="list_organizations", retries=3, retry_delay=timedelta(seconds=30))
        def list_organizations(run: dict) -> list[dict]:
            from tentman.pipeline import BillingRun, list_organizations

            return list_organizations(_engine(), BillingRun.from_dict(run))

        @task(
            task_id="bill_organization",
            multiple_outputs=False,
            retries=policy.retries,
            retry_delay=policy.retry_delay,
            retry_exponential_backoff=2.0,
            max_retry_delay=policy.max_retry_delay,
            max_active_tis_per_dagrun=policy.max_active_organizations,
            pool=policy.pool,
            map_index_template="{{ organization_label }}",
            # After the last retry only: a retry is not worth waking anyone.
            on_failure_callback=[BillingFailureNotifier()],
        )
        def bill_organization(organization: dict, run: dict) -> dict:
            from tentman.pipeline import BillingRun, bill_organization

            context = get_current_context()
            # Shown as the mapped instance's label in the UI: "Acme Homes (#3)".
            context["organization_label"] = organization["label"]
            return bill_organization(
                _engine(),
                BillingRun.from_dict(run),
                organization,
                dag_id=context["dag"].dag_id,
                dag_run_id=context["run_id"],
            )

        @task(
            task_id="record_invoice_runs",
            trigger_rule="all_done",
            retries=3,
            retry_delay=timedelta(seconds=30),
            on_failure_callback=[BillingFailureNotifier()],
        )
        def record_invoice_runs(run: dict | None, organizations: list[dict] | None, results) -> list[dict]:
            from tentman.pipeline import BillingRun, BillingRunFailed, record_invoice_runs

            context = get_current_context()
            try:
                return record_invoice_runs(
                    _engine(),
                    BillingRun.from_dict(run) if run else None,
                    organizations,
                    # One slice request for every result: iterating would fetch them one API call each.
                    list(results[:]) if results is not None else [],
                    dag_id=context["dag"].dag_id,
                    dag_run_id=context["run_id"],
                )
            except BillingRunFailed as exc:
                # Fails the DAG run on purpose (an all_done leaf that succeeds would mark it
                # successful); retrying would only repeat the verdict.
                raise AirflowFailException(str(exc)) from exc

        run = resolve_billing_period()
        organizations = list_organizations(run)
        results = bill_organization.partial(run=run).expand(organization=organizations)
        record_invoice_runs(run, organizations, results)
    return dag
