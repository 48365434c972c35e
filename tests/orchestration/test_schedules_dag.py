"""The organization schedules DAG run by Airflow in-process (dag.test()): the tick at the local due hour
bills, the others do not, missed ticks are caught up once, a re-run tick bills the same rows, a hold
stops it, and the default rent run leaves the organization out."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa

from support.dags import load_dag
from support.factories import add_lease, add_organization, set_billing_settings
from tentman.names import (
    BILL_ORGANIZATION_TASK,
    LIST_ORGANIZATIONS_TASK,
    RECORD_RUNS_TASK,
    RENT_DAG_ID,
    SCHEDULES_DAG_ID,
)
from tentman.settings import SCHEDULES_TICK

pytestmark = pytest.mark.airflow


@pytest.fixture
def tentman_conn(db_uri, monkeypatch, airflow_home):
    monkeypatch.setenv("AIRFLOW_CONN_TENTMAN_DB", db_uri)
    return db_uri


def _states(dag_run) -> dict:
    from airflow.utils.session import create_session

    with create_session() as session:
        return {
            (ti.task_id, ti.map_index): (ti.state, ti.rendered_map_index)
            for ti in dag_run.get_task_instances(session=session)
        }


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_the_schedules_dag_bills_new_york_at_its_local_hour_once(engine, tentman_conn):
    with engine.begin() as conn:
        ny = add_organization(conn, "Hudson Lofts")
        held = add_organization(conn, "Held Harbor")
        plain = add_organization(conn, "Plain Homes")
        ny_lease = add_lease(conn, ny, date(2025, 1, 1), None, "1800.00")
        held_lease = add_lease(conn, held, date(2025, 1, 1), None, "700.00")
        plain_lease = add_lease(conn, plain, date(2025, 1, 1), None, "900.00")
        for org, hold in ((ny, False), (held, True)):
            set_billing_settings(
                conn,
                org,
                hold=hold,
                reason="bank change" if hold else None,
                timezone="America/New_York",
                rent_schedule_day=20,
                rent_schedule_hour=6,
            )
    dag = load_dag(SCHEDULES_DAG_ID)
    from airflow.sdk import CronTriggerTimetable

    assert isinstance(dag.timetable, CronTriggerTimetable) and dag.timetable.expression == SCHEDULES_TICK
    assert dag.catchup is False and dag.max_active_runs == 1
    assert set(dag.params.keys()) == {"organization_ids", "dry_run"}
    assert "Runs every hour on the hour (cron `0 * * * *`)" in " ".join(dag.doc_md.split())
    assert dag.get_task(BILL_ORGANIZATION_TASK).map_index_template == "{{ organization_label }}"

    early = dag.test(logical_date=utc(2027, 1, 20, 10))  # 05:00 in New York
    assert early.state == "success"
    assert _states(early)[(BILL_ORGANIZATION_TASK, -1)][0] == "skipped"  # nothing due: no mapped task

    due = dag.test(logical_date=utc(2027, 1, 20, 11))  # 06:00 in New York
    assert due.state == "success"
    states = _states(due)
    assert {k[1]: v for k, v in states.items() if k[0] == BILL_ORGANIZATION_TASK} == {
        0: ("success", f"Hudson Lofts (#{ny})"),
        1: ("success", f"Held Harbor (#{held})"),
    }
    assert states[(LIST_ORGANIZATIONS_TASK, -1)][0] == states[(RECORD_RUNS_TASK, -1)][0] == "success"
    again = dag.test(logical_date=utc(2027, 1, 20, 11))  # the same tick, re-run
    assert again.state == "success"
    later = dag.test(logical_date=utc(2027, 1, 20, 12))
    assert _states(later)[(BILL_ORGANIZATION_TASK, -1)][0] == "skipped"

    # The default rent run of January 26 bills only the organization without a schedule of its own.
    rent = load_dag(RENT_DAG_ID).test(logical_date=utc(2027, 1, 26, 2))
    assert rent.state == "success"
    with engine.connect() as conn:
        invoices = conn.execute(
            sa.text("SELECT lease_id, billing_period_start, total FROM invoices ORDER BY lease_id")
        ).all()
        runs = conn.execute(
            sa.text(
                "SELECT organization_id, dag_id, dag_run_id, run_type, billing_period_start, status "
                "FROM invoice_runs ORDER BY organization_id"
            )
        ).all()
    assert held_lease not in {i.lease_id for i in invoices}
    assert invoices == [
        (ny_lease, date(2027, 2, 1), Decimal("1800.00")),
        (plain_lease, date(2027, 2, 1), Decimal("900.00")),
    ]
    assert runs == [
        (ny, SCHEDULES_DAG_ID, due.run_id, "monthly_rent", date(2027, 2, 1), "completed"),
        (held, SCHEDULES_DAG_ID, due.run_id, "monthly_rent", date(2027, 2, 1), "on_hold"),
        (plain, RENT_DAG_ID, rent.run_id, "monthly_rent", date(2027, 2, 1), "completed"),
    ]

    # In July New York is on daylight time: 06:00 there is the 10:00 UTC tick. The scheduler was
    # down for the 10:00, 11:00 and 12:00 ticks: the 13:00 one bills August, once.
    caught_up = dag.test(logical_date=utc(2027, 7, 20, 13))
    assert caught_up.state == "success"
    assert dag.test(logical_date=utc(2027, 7, 20, 14)).state == "success"
    with engine.connect() as conn:
        august = conn.execute(
            sa.text("SELECT dag_run_id, status FROM invoice_runs WHERE billing_period_start = '2027-08-01'")
        ).all()
    assert sorted(august) == [(caught_up.run_id, "completed"), (caught_up.run_id, "on_hold")]
