"""Airflow DAG `tentman_utility_billing`: weekly utility billing for every organization."""

from tentman.names import BILLING_MONTH_FORMAT, RECORD_RUNS_TASK, UTILITY_DAG_ID, RunStatus, RunType
from tentman.orchestration.dag_factory import build_billing_dag, schedule_in_words
from tentman.orchestration.params import billing_month_param, dry_run_param, organization_ids_param
from tentman.settings import utility_schedule

SCHEDULE = utility_schedule()  # settings.UTILITY_SCHEDULE unless TENTMAN_UTILITY_SCHEDULE is set

DOC_MD = f"""
# Utility billing

Bills every **finalized, not yet invoiced** utility statement onto the lease's draft utility
invoice of the **current month** (the month of the run's logical date). Runs
{schedule_in_words(SCHEDULE)}.

* Statements of earlier months that were finalized late are billed too; a moved-out tenant's
  statements are billed as well.
* Exactly once: each statement is linked to its invoice line in the same transaction, and the
  database refuses a second line for the same statement. Re-runs, cleared tasks, overlapping runs
  and backfills never bill a statement twice.
* If the month's utility invoice was already issued, the statements stay pending for the next
  month's run (recorded in the run's errors). Bad statements are recorded and left pending.
* One mapped task per organization; `{RECORD_RUNS_TASK}` writes one `invoice_runs` row
  (`run_type = '{RunType.UTILITY.value}'`) per organization and fails the run if any organization failed.

* An organization on billing hold is not billed by a run for all organizations
  (`{RunStatus.ON_HOLD.value}`); its statements stay pending until the hold is lifted. A run that
  names it bills it.

**Params**: `billing_month` (`{BILLING_MONTH_FORMAT}`, empty = the run's month), `organization_ids`
(empty = all active), `dry_run` (compute and report, write nothing).
"""

dag = build_billing_dag(
    dag_id=UTILITY_DAG_ID,
    run_type=RunType.UTILITY,
    schedule=SCHEDULE,
    tags=["utility"],
    doc_md=DOC_MD,
    params={
        "billing_month": billing_month_param("the month of the run's logical date"),
        "organization_ids": organization_ids_param(),
        "dry_run": dry_run_param(),
    },
)
