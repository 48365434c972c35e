"""Airflow DAG `tentman_monthly_rent_generation`: monthly rent invoices for every organization."""

from tentman.names import (
    BILLING_MONTH_FORMAT,
    DEFAULT_PRORATION_METHOD,
    RECORD_RUNS_TASK,
    RENT_DAG_ID,
    RunStatus,
    RunType,
)
from tentman.orchestration.dag_factory import build_billing_dag, schedule_in_words
from tentman.orchestration.params import (
    billing_month_param,
    dry_run_param,
    organization_ids_param,
    proration_method_param,
)
from tentman.settings import rent_schedule

SCHEDULE = rent_schedule()  # settings.RENT_SCHEDULE unless TENTMAN_RENT_SCHEDULE is set

DOC_MD = f"""
# Monthly rent generation

Drafts **next month's** rent invoices for every active organization: a run bills the month after
its logical date (the January run bills February). Runs {schedule_in_words(SCHEDULE)}.

* One mapped task per organization (labelled with its name); each retries with exponential
  backoff, and one organization failing never stops the others.
* Idempotent: re-running, clearing a task or backfilling updates the draft invoices the job owns
  and never duplicates one. Issued, paid and void invoices are never touched.
* `{RECORD_RUNS_TASK}` writes one `invoice_runs` row per organization (counts, errors) and fails
  the run if any organization failed.

* An organization on billing hold (its billing settings, on the "Billing runs" page) is not
  billed by a run for all organizations: its `invoice_runs` row says `{RunStatus.ON_HOLD.value}`. A run
  that names it in `organization_ids` bills it.

**Params**: `billing_month` (`{BILLING_MONTH_FORMAT}`, empty = from the run date), `organization_ids`
(empty = all active), `proration_method` (empty = each organization's own, else
`{DEFAULT_PRORATION_METHOD.value}`), `dry_run` (compute and report, write nothing).
"""

dag = build_billing_dag(
    dag_id=RENT_DAG_ID,
    run_type=RunType.MONTHLY_RENT,
    schedule=SCHEDULE,
    tags=["rent"],
    doc_md=DOC_MD,
    params={
        "billing_month": billing_month_param("the month after the run's logical date"),
        "organization_ids": organization_ids_param(),
        "proration_method": proration_method_param(),
        "dry_run": dry_run_param(),
    },
)
