"""A whole billing run, its steps in order as the DAG runs them, without Airflow."""

from __future__ import annotations

from datetime import datetime

from tentman.names import RENT_DAG_ID, UTILITY_DAG_ID, RunType
from tentman.runs.bill import bill_organization
from tentman.runs.organizations import list_organizations
from tentman.runs.reconcile import reconcile_dag_run
from tentman.runs.record import record_invoice_runs
from tentman.runs.resolve import resolve_billing_period


def run_steps(engine, run_type: str, moment: datetime, dag_run_id: str, between=None):
    """A whole run, its steps in order; `between(conn)` runs after the organizations' runs opened and
    before the reconciliation (a writer concurrent with the run). The reconciliations it stored."""
    dag_id = RENT_DAG_ID if run_type == RunType.MONTHLY_RENT else UTILITY_DAG_ID
    run = resolve_billing_period(engine, run_type=run_type, params={}, logical_date=moment, run_after=moment)
    organizations = list_organizations(engine, run)
    results = [bill_organization(engine, run, o, dag_id=dag_id, dag_run_id=dag_run_id) for o in organizations]
    record_invoice_runs(engine, run, organizations, results, dag_id=dag_id, dag_run_id=dag_run_id)
    if between:
        with engine.begin() as conn:
            between(conn)
    return reconcile_dag_run(engine, dag_id=dag_id, dag_run_id=dag_run_id)
