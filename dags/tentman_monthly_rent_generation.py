"""Airflow DAG `tentman_monthly_rent_generation`: monthly rent invoices for every organization."""

from tentman.names import RENT_DAG_ID, RENT_RUN
from tentman.orchestration.dag_factory import build_billing_dag
from tentman.orchestration.params import (
    billing_month_param,
    dry_run_param,
    organization_ids_param,
    proration_method_param,
)
from tentman.settings import rent_schedule

DOC_MD = """
# Monthly rent generation

Drafts **next month's** rent invoices for every active organization: the run of the 26th bills
the following month (the Jan 26 run bills February). Runs at 02:00 UTC on the 26th.

* One mapped task per organization (labelled with its name); each retries with exponential
  backoff, and one organization failing never stops the others.
* Idempotent: re-running, clearing a task or backfilling updates the draft invoices the job owns
  and never duplicates one. Issued, paid and void invoices are never touched.
* `record_invoice_runs` writes one `invoice_runs` row per organization (counts, errors) and fails
  the run if any organization failed.

* An organization on billing hold (its billing settings, on the "Billing runs" page) is not
  billed by a run for all organizations: its `invoice_runs` row says `on_hold`. A run that names
  it in `organization_ids` bills it.

**Params**: `billing_month` (`YYYY-MM`, empty = from the run date), `organization_ids` (empty = all
active), `proration_method` (empty = each organization's own, else `ActualDaysInMonth`), `dry_run`
(compute and report, write nothing).
"""

dag = build_billing_dag(
    dag_id=RENT_DAG_ID,
    run_type=RENT_RUN,
    schedule=rent_schedule(),  # "0 2 26 * *" (UTC) unless TENTMAN_RENT_SCHEDULE is set
    tags=["rent"],
    doc_md=DOC_MD,
    params={
        "billing_month": billing_month_param("the month after the run's logical date"),
        "organization_ids": organization_ids_param(),
        "proration_method": proration_method_param(),
        "dry_run": dry_run_param(),
    },
)
