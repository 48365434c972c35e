"""Faults on live Airflow: killed workers, a restarted database, a stopped scheduler, a missed
scheduled run, and runs of the same period at the same time. Every scenario ends with the audit.

The TentMan database runs on its own embedded PostgreSQL here, so it can be restarted without
touching Airflow's metadata database.
"""

from __future__ import annotations

import os
import re
import signal
import time
from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa

from support.factories import add_lease, add_organization
from support.live import Api, live_stack, make_slow, poll, wait_for_due_runs_to_end
from tentman.billing.locking import organization_lock_key
from tentman.names import DAG_IDS, RENT_DAG_ID, UTILITY_DAG_ID, InvoiceType
from tentman_dev.local import server_uri, start_embedded_postgres

pytestmark = [pytest.mark.live, pytest.mark.slow, pytest.mark.reliability]

RETRY_DELAY_S = 2


@pytest.fixture(scope="module")
def tentman_server(tmp_path_factory):
    server = start_embedded_postgres(tmp_path_factory.mktemp("tentman_pg") / "data", cleanup_mode="delete")
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def faults(pg_admin_uri, tentman_server, tmp_path_factory):
    extra = {
        "TENTMAN_ORG_TASK_RETRIES": "4",
        "TENTMAN_ORG_TASK_RETRY_DELAY_SECONDS": str(RETRY_DELAY_S),
        # A task whose process vanished is noticed after 20 s without a heartbeat (default 300 s).
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
    }
    with live_stack(
        pg_admin_uri,
        tmp_path_factory.mktemp("airflow_faults"),
        tentman_admin_uri=server_uri(tentman_server),
        extra_env=extra,
    ) as (stack, engine, _):
        api = Api(stack.base_url, "admin")
        for dag_id in DAG_IDS:
            api.client.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
        # The latest tick of each scheduled DAG runs once they are unpaused, billing every organization
        # present: let those runs end before the scenarios add theirs, so that each scenario's
        # organizations are billed by its own runs alone and its audit sees only them.
        wait_for_due_runs_to_end(stack)
        yield stack, engine, api


def sleeping_writer_pid(engine, timeout: float = 120) -> int:
    """The pid of the task process whose session sleeps in the slow trigger (from application_name)."""
    found = {}

    def look():
        with engine.connect() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT application_name FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
                    "AND application_name LIKE 'tentman-billing pid=%'"
                )
            ).first()
        if row:
            found["pid"] = int(re.search(r"pid=(\d+)", row.application_name).group(1))
        return bool(found)

    poll(look, timeout=timeout, interval=0.5, what="a billing session sleeping in the slow trigger")
    return found["pid"]


def orgs_with_leases(engine, prefix: str, leases_per_org: list[int]) -> list[int]:
    orgs = []
    with engine.begin() as conn:
        for i, n in enumerate(leases_per_org):
            org = add_organization(conn, f"{prefix} {i}")
            orgs.append(org)
            for j in range(n):
                add_lease(conn, org, date(2025, 1, 1) if j % 5 else date(2026, 9, 12), None, f"{1000 + 7 * j}.00")
    return orgs


def drafts(engine, orgs, month: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT count(*) FROM invoices "
                "WHERE organization_id = ANY(:o) AND billing_period_start = CAST(:m AS date)"
            ),
            {"o": orgs, "m": f"{month}-01"},
        ).scalar()


def test_worker_killed_mid_write_is_retried_and_leaves_no_partial_invoice(faults, audited):
    stack, engine, api = faults
    orgs = orgs_with_leases(engine, "Killed", [30, 10])
    make_slow(engine, orgs[0], 15, "2026-10")
    run_id = api.trigger(RENT_DAG_ID, {"billing_month": "2026-10", "organization_ids": orgs}).json()["dag_run_id"]
    pid = sleeping_writer_pid(engine)
    os.kill(pid, signal.SIGKILL)  # the organization task's process, in the middle of its transaction
    assert api.wait(RENT_DAG_ID, run_id, timeout=400)["state"] == "success"
    tries = api.tries(RENT_DAG_ID, run_id, "bill_organization", 0)
    assert len(tries) >= 2 and tries[0]["state"] != "success" and tries[-1]["state"] == "success"
    assert api.task_instances(RENT_DAG_ID, run_id)[("bill_organization", 1)]["try_number"] == 1
    assert drafts(engine, orgs, "2026-10") == 40  # complete, and nothing half-written survived
    audited(engine, organization_ids=orgs)


def test_database_restart_mid_run_is_retried_and_completes(faults, tentman_server, audited):
    stack, engine, api = faults
    orgs = orgs_with_leases(engine, "Restart", [20, 20, 20])
    make_slow(engine, orgs[1], 10, "2026-11")
    run_id = api.trigger(RENT_DAG_ID, {"billing_month": "2026-11", "organization_ids": orgs}).json()["dag_run_id"]
    sleeping_writer_pid(engine)
    from pgserver._commands import pg_ctl

    pg_ctl(
        ["-w", "-m", "fast", "restart"], pgdata=tentman_server.pgdata, user=tentman_server.system_user
    )  # every session to the TentMan DB is cut
    assert api.wait(RENT_DAG_ID, run_id, timeout=400)["state"] == "success"
    tries = api.tries(RENT_DAG_ID, run_id, "bill_organization", 1)
    assert [t["state"] for t in tries][0] != "success" and tries[-1]["state"] == "success"
    assert drafts(engine, orgs, "2026-11") == 60
    audited(engine, organization_ids=orgs)


def test_scheduler_stopped_mid_run_and_restarted_completes_the_run(faults, audited):
    stack, engine, api = faults
    orgs = orgs_with_leases(engine, "Scheduler", [15, 15])
    make_slow(engine, orgs[0], 8, "2027-01")
    run_id = api.trigger(RENT_DAG_ID, {"billing_month": "2027-01", "organization_ids": orgs}).json()["dag_run_id"]
    sleeping_writer_pid(engine)
    stack.stop(("scheduler",))  # with LocalExecutor this takes the running task processes down too
    time.sleep(5)  # the scheduler stays down a moment: nothing progresses meanwhile
    stack.start(("scheduler",))
    assert api.wait(RENT_DAG_ID, run_id, timeout=600)["state"] == "success"
    assert drafts(engine, orgs, "2027-01") == 30
    audited(engine, organization_ids=orgs)


def test_rent_and_utility_side_by_side_and_two_runs_of_one_month(faults, audited):
    stack, engine, api = faults
    orgs = orgs_with_leases(engine, "Side by side", [25, 25])
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                """INSERT INTO utility_statements (organization_id, lease_id, utility_type, period_start, period_end,
                                                  amount, status)
               SELECT organization_id, id, 'water', '2026-08-01', '2026-08-31', 21.50, 'finalized'
               FROM leases WHERE organization_id = ANY(:o)"""
            ),
            {"o": orgs},
        )
    conf = {"billing_month": "2026-09", "organization_ids": orgs}
    runs = [
        (RENT_DAG_ID, api.trigger(RENT_DAG_ID, conf).json()["dag_run_id"]),
        (UTILITY_DAG_ID, api.trigger(UTILITY_DAG_ID, conf).json()["dag_run_id"]),
        (RENT_DAG_ID, api.trigger(RENT_DAG_ID, conf).json()["dag_run_id"]),  # a second run of the same month
        (UTILITY_DAG_ID, api.trigger(UTILITY_DAG_ID, conf).json()["dag_run_id"]),
    ]
    assert [api.wait(dag, run, timeout=400)["state"] for dag, run in runs] == ["success"] * 4
    with engine.connect() as conn:
        assert conn.execute(
            sa.text(
                "SELECT invoice_type, count(*) FROM invoices WHERE organization_id = ANY(:o) GROUP BY 1 ORDER BY 1"
            ),
            {"o": orgs},
        ).all() == [("rent", 50), ("utility", 50)]
    audited(engine, organization_ids=orgs)


def test_second_backfill_over_the_same_months_is_refused_then_reprocesses_cleanly(faults, audited):
    stack, engine, api = faults
    orgs = orgs_with_leases(engine, "Backfills", [10])
    conf = f'{{"organization_ids": {orgs}}}'
    window = ["--from-date", "2026-09-01", "--to-date", "2026-10-31", "--dag-run-conf", conf]  # bills Oct and Nov
    # The first backfill stays running while the second is created: the organization's billing lock
    # is held here until then (else, on a loaded machine, the second command's seconds of importing
    # Airflow can outlast the whole first backfill, and the second is rightly accepted).
    with engine.connect() as holder, holder.begin():
        holder.execute(
            sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
            {"key": organization_lock_key(InvoiceType.RENT, orgs[0])},
        )
        first = stack.airflow("backfill", "create", "--dag-id", RENT_DAG_ID, *window, check=False)
        assert first.returncode == 0, first.stderr
        second = stack.airflow(
            "backfill", "create", "--dag-id", RENT_DAG_ID, *window, "--reprocess-behavior", "completed", check=False
        )
    assert second.returncode != 0 and "There can be only one running backfill per Dag" in second.stderr

    def backfills_done():
        backfills = api.client.get("/backfills", params={"dag_id": RENT_DAG_ID}).json()["backfills"]
        return backfills and all(b["completed_at"] for b in backfills)

    poll(backfills_done, timeout=600, what="the first backfill")
    again = stack.airflow(
        "backfill", "create", "--dag-id", RENT_DAG_ID, *window, "--reprocess-behavior", "completed", check=False
    )
    assert again.returncode == 0, again.stderr
    poll(lambda: len(api.client.get("/backfills", params={"dag_id": RENT_DAG_ID}).json()["backfills"]) == 2)
    poll(backfills_done, timeout=600, what="the reprocessing backfill")
    assert drafts(engine, orgs, "2026-10") == 10 and drafts(engine, orgs, "2026-11") == 10
    audited(engine, organization_ids=orgs)


@pytest.fixture
def every_minute(pg_admin_uri, tmp_path_factory):
    """A stack whose rent DAG runs every minute: a month's tick, sped up, to miss one on purpose."""
    extra = {
        "TENTMAN_RENT_SCHEDULE": "* * * * *",
        "TENTMAN_ORG_TASK_RETRY_DELAY_SECONDS": "2",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    }
    with live_stack(pg_admin_uri, tmp_path_factory.mktemp("airflow_minutely"), extra_env=extra) as (stack, engine, _):
        yield stack, engine, Api(stack.base_url, "admin")


def _scheduled_runs(api) -> list[dict]:
    runs = api.client.get(f"/dags/{RENT_DAG_ID}/dagRuns", params={"run_type": "scheduled", "limit": 100}).json()[
        "dag_runs"
    ]
    return sorted(runs, key=lambda r: r["logical_date"])


def test_missed_scheduled_run_runs_once_when_the_scheduler_returns(every_minute, audited):
    stack, engine, api = every_minute
    orgs = orgs_with_leases(engine, "Missed", [12])
    api.client.patch(f"/dags/{RENT_DAG_ID}", json={"is_paused": False}).raise_for_status()
    # Steady state first: the run of the current minute's tick is done early in that minute.
    # (Unpausing also runs the tick the DAG was created at: the timetable catches up once.)
    state = {}

    def settled():
        now = datetime.now(UTC)
        runs = _scheduled_runs(api)
        if not runs or any(r["state"] not in ("success", "failed") for r in runs) or now.second > 40:
            return False
        latest = runs[-1]
        if datetime.fromisoformat(latest["logical_date"]) != now.replace(second=0, microsecond=0):
            return False
        state["first"] = latest
        return True

    poll(settled, timeout=400, interval=0.5, what="a scheduled run finished early in its minute")
    stack.stop(("scheduler",))
    first = state["first"]
    assert first["state"] == "success"
    t0 = datetime.fromisoformat(first["logical_date"])
    missed = t0 + timedelta(minutes=1)
    assert datetime.now(UTC) < missed, "the scheduler was not stopped before the next tick"
    # Down across exactly one tick: come back 15 s after it, well before the one after.
    while datetime.now(UTC) < missed + timedelta(seconds=15):
        time.sleep(0.5)
    stack.start(("scheduler",))
    poll(
        lambda: any(datetime.fromisoformat(r["logical_date"]) == missed for r in _scheduled_runs(api)),
        timeout=90,
        what="the missed run",
    )
    run = next(r for r in _scheduled_runs(api) if datetime.fromisoformat(r["logical_date"]) == missed)
    # A manual run of the same month beside it: it waits its turn (max_active_runs=1).
    manual = api.trigger(RENT_DAG_ID, {"billing_month": f"{(missed.replace(day=28) + timedelta(days=4)):%Y-%m}"}).json()
    assert api.wait(RENT_DAG_ID, run["dag_run_id"])["state"] == "success"
    assert api.wait(RENT_DAG_ID, manual["dag_run_id"])["state"] == "success"
    api.client.patch(f"/dags/{RENT_DAG_ID}", json={"is_paused": True}).raise_for_status()
    logical = [datetime.fromisoformat(r["logical_date"]) for r in _scheduled_runs(api)]
    assert logical.count(missed) == 1  # not zero times, not twice
    next_month = (missed.replace(day=28) + timedelta(days=4)).replace(day=1).date()
    with engine.connect() as conn:
        periods = (
            conn.execute(
                sa.text("SELECT DISTINCT billing_period_start FROM invoice_runs WHERE dag_run_id = :r"),
                {"r": run["dag_run_id"]},
            )
            .scalars()
            .all()
        )
    assert periods == [next_month]  # the month after the month of its logical date
    assert drafts(engine, orgs, f"{next_month:%Y-%m}") == 12
    audited(engine, organization_ids=orgs)
