"""Airflow DAG `tentman_organization_schedules`: bills, every hour, the organizations whose own
rent or utility schedule is due."""

from tentman.names import RECORD_RUNS_TASK, RENT_DAG_ID, SCHEDULES_DAG_ID, UTILITY_DAG_ID, RunStatus
from tentman.orchestration.dag_factory import build_schedules_dag, schedule_in_words
from tentman.orchestration.params import dry_run_param, organization_ids_param
from tentman.settings import schedules_tick

SCHEDULE = schedules_tick()  # settings.SCHEDULES_TICK unless TENTMAN_SCHEDULES_TICK is set

DOC_MD = f"""
# Organization schedules

Bills the organizations that bill on a schedule of their own (their billing settings: a time zone,
a rent day and hour, a utility weekday and hour), each at its own local time. Runs
{schedule_in_words(SCHEDULE)}; each tick bills every organization whose due time has come and
whose period was not billed yet. `{RENT_DAG_ID}` and `{UTILITY_DAG_ID}` leave these organizations
out of their runs for all organizations.

* Rent drafts next month's invoices, utility bills the finalized statements, with the same engines,
  hold rules, retries and alerts as the two billing DAGs; one mapped task per organization.
* Exactly once per period: a missed tick is caught up by the next one (within 7 days), a re-run or
  a cleared tick bills the same periods into the same rows, and no other run bills a period a tick
  claimed. An organization due for rent and utility in one tick gets its utility at the next tick.
* `{RECORD_RUNS_TASK}` writes one `invoice_runs` row per organization (`run_type` rent or utility,
  as the two DAGs do; `{RunStatus.ON_HOLD.value}` for an organization on hold) and fails the run if
  any organization failed; a failed organization is retried by the next tick.
* Backfilling a range bills each organization whose due time falls in it, for the period it stands for.

**Params**: `organization_ids` (empty = every organization with its own schedule; only those due
are billed), `dry_run` (list and compute, claim and write nothing).
"""

dag = build_schedules_dag(
    dag_id=SCHEDULES_DAG_ID,
    schedule=SCHEDULE,
    doc_md=DOC_MD,
    params={"organization_ids": organization_ids_param(), "dry_run": dry_run_param()},
)
