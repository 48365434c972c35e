"""The CeleryExecutor, live: two workers, two schedulers, an embedded Valkey broker, and their faults.

One stack for the module (what `make up EXECUTOR=celery WORKERS=2` starts, plus a second
scheduler), with the failure-detection settings a billing deployment runs with
(tentman.deployment.FAILURE_DETECTION). Every scenario ends with the audit: nothing lost,
nothing doubled, no issued invoice changed.
"""

from __future__ import annotations

import os
import signal
import time
from collections import defaultdict
from datetime import date

import pytest
import sqlalchemy as sa

from support.factories import add_lease, add_organization
from support.live import Api, live_stack, make_slow, poll
from support.priority import critical_before_routine
from tentman.deployment import FAILURE_DETECTION
from tentman.names import DAG_IDS, RENT_DAG_ID
from tentman_dev.airflow_stack import free_port, read_metadata
from tentman_dev.broker import EmbeddedBroker

pytestmark = [pytest.mark.live, pytest.mark.slow, pytest.mark.reliability]

WORKERS = ("worker-1", "worker-2")
SCHEDULERS = ("scheduler", "scheduler-2")
# How long a dead worker's task may take to be noticed, failed and retried elsewhere.
DEAD_WORKER_S = int(FAILURE_DETECTION["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"]) + 120


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    broker = EmbeddedBroker(tmp_path_factory.mktemp("broker"), free_port())
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def celery(pg_admin_uri, broker, tmp_path_factory):
    extra = {
        "TENTMAN_ORG_TASK_RETRIES": "4",
        "TENTMAN_ORG_TASK_RETRY_DELAY_SECONDS": "2",
        "TENTMAN_MAX_ACTIVE_ORGANIZATIONS": "4",
        "TENTMAN_RENT_SCHEDULE": "manual",
        "TENTMAN_UTILITY_SCHEDULE": "manual",
    }
    with live_stack(
        pg_admin_uri,
        tmp_path_factory.mktemp("airflow_celery"),
        extra_env=extra,
        executor="celery",
        broker_url=broker.url,
        workers=len(WORKERS),
        schedulers=len(SCHEDULERS),
    ) as (stack, engine, _):
        api = Api(stack.base_url, "admin")
        for dag_id in DAG_IDS:
            api.client.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
        yield stack, engine, api


@pytest.fixture
def all_running(celery):
    """Restart whatever a scenario killed, so the next one starts with the whole stack."""
    yield
    stack = celery[0]
    dead = tuple(name for name in WORKERS + SCHEDULERS if name not in stack.processes)
    if dead:
        stack.start(dead)
        stack.wait_healthy(timeout=180)


def organizations(engine, prefix: str, count: int, leases: int = 3) -> list[int]:
    orgs = []
    with engine.begin() as conn:
        for number in range(count):
            org = add_organization(conn, f"{prefix} {number}")
            orgs.append(org)
            for lease in range(leases):
                # One lease in three moves in mid-month: prorated.
                start = date(2026, 9, 12) if lease % 3 == 0 else date(2025, 1, 1)
                add_lease(conn, org, start, None, f"{1200 + 10 * lease}.00")
    return orgs


def trigger(api, orgs: list[int], month: str) -> str:
    response = api.trigger(RENT_DAG_ID, {"billing_month": month, "organization_ids": orgs})
    response.raise_for_status()
    return response.json()["dag_run_id"]


def organization_tasks(api, run_id: str) -> list[dict]:
    return [
        ti for (task_id, _), ti in api.task_instances(RENT_DAG_ID, run_id).items() if task_id == "bill_organization"
    ]


def running_on(api, run_id: str) -> dict[str, list[str]]:
    """The map indexes of the organization tasks running now, by the worker running them."""
    by_worker = defaultdict(list)
    for ti in organization_tasks(api, run_id):
        if ti["state"] == "running":
            by_worker[ti["hostname"]].append(ti["map_index"])
    return by_worker


def drafts(engine, orgs: list[int], month: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT count(*) FROM invoices WHERE organization_id = ANY(:o) AND billing_period_start = :m"),
            {"o": orgs, "m": f"{month}-01"},
        ).scalar()


def kill(stack, name: str) -> None:
    """SIGKILL a component and every process it started (as when its machine dies)."""
    process = stack.processes.pop(name)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def test_a_run_spreads_over_both_workers(celery, audited, capsys):
    stack, engine, api = celery
    orgs = organizations(engine, "Spread", 12)
    run_id = trigger(api, orgs, "2027-01")
    assert api.wait(RENT_DAG_ID, run_id, timeout=600)["state"] == "success"
    by_worker = defaultdict(list)
    for ti in organization_tasks(api, run_id):
        assert ti["state"] == "success"
        by_worker[ti["hostname"]].append(ti["rendered_map_index"])
    with capsys.disabled():
        for worker, labels in sorted(by_worker.items()):
            print(f"\n{worker} billed {len(labels)} organizations: {', '.join(sorted(labels))}")
    assert set(by_worker) == set(WORKERS)
    assert sum(len(labels) for labels in by_worker.values()) == 12
    assert drafts(engine, orgs, "2027-01") == 12 * 3
    audited(engine)


def test_a_killed_worker_s_organizations_are_retried_on_the_other(celery, audited, all_running):
    stack, engine, api = celery
    orgs = organizations(engine, "Killed worker", 4)
    for org in orgs:
        make_slow(engine, org, 20, "2027-02")
    run_id = trigger(api, orgs, "2027-02")
    # Every organization running (each sleeps 20 s in its first insert; two per worker): a task the
    # victim had received but not yet started would sit queued until task_queued_timeout (300 s),
    # another scenario than a worker dying with its running tasks.
    poll(
        lambda: sum(map(len, running_on(api, run_id).values())) == len(orgs),
        timeout=180,
        interval=1,
        what="every organization task running",
    )
    victim, killed = max(running_on(api, run_id).items(), key=lambda item: len(item[1]))
    kill(stack, victim)
    run = api.wait(RENT_DAG_ID, run_id, timeout=DEAD_WORKER_S + 300, poll=3)
    assert run["state"] == "success"
    survivor = next(worker for worker in WORKERS if worker != victim)
    finals = {ti["map_index"]: ti for ti in organization_tasks(api, run_id)}
    for map_index in killed:
        assert finals[map_index]["try_number"] >= 2 and finals[map_index]["hostname"] == survivor, finals[map_index]
    assert drafts(engine, orgs, "2027-02") == 4 * 3
    audited(engine)


def test_the_other_scheduler_finishes_a_run_whose_scheduler_died(celery, audited, all_running):
    stack, engine, api = celery
    orgs = organizations(engine, "Killed scheduler", 4)
    for org in orgs:
        make_slow(engine, org, 15, "2027-03")
    run_id = trigger(api, orgs, "2027-03")
    poll(lambda: running_on(api, run_id), timeout=180, interval=1, what="organization tasks running")
    queued_by = _scheduler_that_queued(stack, run_id)
    assert queued_by in SCHEDULERS
    kill(stack, queued_by)
    run = api.wait(RENT_DAG_ID, run_id, timeout=600, poll=3)
    assert run["state"] == "success"
    assert drafts(engine, orgs, "2027-03") == 4 * 3
    audited(engine)


def _scheduler_that_queued(stack, run_id: str) -> str:
    """The component name of the scheduler job that queued the run's organization tasks."""
    return read_metadata(
        stack.env,
        """
        SELECT j.hostname FROM task_instance ti JOIN job j ON j.id = ti.queued_by_job_id
        WHERE ti.dag_id = :dag AND ti.run_id = :run AND ti.task_id = 'bill_organization'
        GROUP BY j.hostname ORDER BY count(*) DESC LIMIT 1
        """,
        dag=RENT_DAG_ID,
        run=run_id,
    )


def test_a_run_completes_after_its_broker_restarted(celery, broker, audited):
    stack, engine, api = celery
    orgs = organizations(engine, "Broker restart", 6)
    for org in orgs[:2]:
        make_slow(engine, org, 10, "2027-04")
    run_id = trigger(api, orgs, "2027-04")
    poll(lambda: running_on(api, run_id), timeout=180, interval=1, what="organization tasks running")
    broker.stop()
    time.sleep(10)
    broker.start()
    run = api.wait(RENT_DAG_ID, run_id, timeout=900, poll=3)
    assert run["state"] == "success"
    assert drafts(engine, orgs, "2027-04") == 6 * 3
    audited(engine)


def test_a_run_triggered_while_the_broker_is_down_waits_for_it(celery, broker, audited):
    stack, engine, api = celery
    orgs = organizations(engine, "Broker down", 3)
    broker.stop()
    try:
        run_id = trigger(api, orgs, "2027-05")
        time.sleep(20)
        assert api.run(RENT_DAG_ID, run_id)["state"] in ("queued", "running")
        assert drafts(engine, orgs, "2027-05") == 0
    finally:
        broker.start()
    run = api.wait(RENT_DAG_ID, run_id, timeout=900, poll=3)
    assert run["state"] == "success"
    assert drafts(engine, orgs, "2027-05") == 3 * 3
    audited(engine)


def test_rent_organizations_start_before_waiting_utility_ones(celery, audited):
    """Critical before routine on Celery, two schedulers and two workers: the pool (2 slots) keeps the
    backlog in the scheduler, which queues by priority, not in Redis, which is FIFO per queue."""
    _, engine, api = celery
    critical_before_routine(api, engine, billing_slots=2)
    audited(engine)
