"""Critical before routine, live: a rent run's organization tasks overtake a waiting utility run's."""

from __future__ import annotations

import uuid
from datetime import date, datetime

import sqlalchemy as sa

from support.factories import add_lease, add_organization, add_statement
from support.live import poll
from tentman.names import RENT_DAG_ID, UTILITY_DAG_ID
from tentman.settings import BILLING_POOL, RENT_PRIORITY_WEIGHT, UTILITY_PRIORITY_WEIGHT

# More rent organizations than utility ones started before rent's exist: with equal weights,
# Airflow queues by map index and interleaves the two runs (utility's #3 before rent's #4; measured),
# so only the weights keep every rent organization first.
ROUTINE_ORGANIZATIONS = 10
CRITICAL_ORGANIZATIONS = 6
# Each utility invoice of the scenario takes this long to write: its organizations queue up behind the slots.
SLOW_UTILITY_S = 3


def set_pool_slots(api, pool: dict, slots: int) -> None:
    # Airflow 3.3's PATCH validates the whole pool, even with update_mask=slots.
    body = {"pool": pool["name"], "slots": slots, "include_deferred": pool["include_deferred"]}
    response = api.client.patch(f"/pools/{pool['name']}", params={"update_mask": "slots"}, json=body)
    assert response.status_code == 200, response.text


def _organizations(engine, prefix: str, count: int, rent: str) -> tuple[list[int], list[int]]:
    orgs, leases = [], []
    with engine.begin() as conn:
        for number in range(count):
            orgs.append(add_organization(conn, f"{prefix} {number}"))
            leases.append(add_lease(conn, orgs[-1], date(2025, 1, 1), None, rent))
    return orgs, leases


def _organization_tasks(api, dag_id: str, run_id: str) -> dict[int, dict]:
    tis = api.task_instances(dag_id, run_id)
    return {map_index: ti for (task_id, map_index), ti in tis.items() if task_id == "bill_organization"}


def _moment(task_instance: dict, field: str) -> datetime:
    return datetime.fromisoformat(task_instance[field])


def critical_before_routine(api, engine, *, billing_slots: int) -> None:
    """With the billing pool at `billing_slots`, trigger a rent run while a utility run's organization
    tasks wait for the pool: every rent organization task must start before every utility one that
    was still waiting (not yet sent to the executor) when rent's organization tasks appeared."""
    routine, routine_leases = _organizations(engine, "Routine", ROUTINE_ORGANIZATIONS, "800.00")
    critical, _ = _organizations(engine, "Critical", CRITICAL_ORGANIZATIONS, "1200.00")
    slow = f"test_slow_routine_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        for org, lease in zip(routine, routine_leases, strict=True):
            add_statement(conn, org, lease, "25.00", date(2027, 8, 1), date(2027, 8, 31))
        conn.exec_driver_sql(f"""
            CREATE FUNCTION {slow}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_sleep({SLOW_UTILITY_S}); RETURN NEW; END $$;
            CREATE TRIGGER {slow} BEFORE INSERT ON invoices FOR EACH ROW
            WHEN (NEW.invoice_type = 'utility' AND NEW.organization_id IN ({", ".join(map(str, routine))}))
            EXECUTE FUNCTION {slow}();""")
    pool = api.client.get(f"/pools/{BILLING_POOL}").json()
    set_pool_slots(api, pool, billing_slots)
    try:
        utility_run = api.trigger(UTILITY_DAG_ID, {"billing_month": "2027-08", "organization_ids": routine}).json()
        utility_id = utility_run["dag_run_id"]
        running = lambda: [  # noqa: E731
            i for i, ti in _organization_tasks(api, UTILITY_DAG_ID, utility_id).items() if ti["state"] == "running"
        ]
        poll(running, what="a utility organization task running")
        rent_id = api.trigger(RENT_DAG_ID, {"billing_month": "2027-09", "organization_ids": critical}).json()[
            "dag_run_id"
        ]
        # Until a task instance is "scheduled", the scheduler does not consider it: a slot freed while
        # rent's are still being created goes to a waiting utility task (Airflow guarantees no more).
        sent = {"scheduled", "queued", "running", "success"}
        poll(
            lambda: (
                {ti["state"] for ti in _organization_tasks(api, RENT_DAG_ID, rent_id).values()} <= sent
                and len(_organization_tasks(api, RENT_DAG_ID, rent_id)) == CRITICAL_ORGANIZATIONS
            ),
            interval=0.2,
            what="rent's organization tasks scheduled",
        )
        waiting = {
            i for i, ti in _organization_tasks(api, UTILITY_DAG_ID, utility_id).items() if ti["state"] == "scheduled"
        }
        assert api.wait(RENT_DAG_ID, rent_id, timeout=600)["state"] == "success"
        assert api.wait(UTILITY_DAG_ID, utility_id, timeout=600)["state"] == "success"
    finally:
        set_pool_slots(api, pool, pool["slots"])

    rent_tis = api.task_instances(RENT_DAG_ID, rent_id)
    utility = _organization_tasks(api, UTILITY_DAG_ID, utility_id)
    assert {ti["priority_weight"] for ti in rent_tis.values()} == {RENT_PRIORITY_WEIGHT}
    assert {ti["priority_weight"] for ti in utility.values()} == {UTILITY_PRIORITY_WEIGHT}
    rent = _organization_tasks(api, RENT_DAG_ID, rent_id)
    assert len(rent) == CRITICAL_ORGANIZATIONS and len(waiting) >= 3, (rent, waiting)
    # What Airflow orders is the sending: each scheduling loop moves waiting tasks to "queued" by
    # priority, all with the loop's one timestamp. Every rent task was sent no later than every
    # utility task that was waiting.
    rent_sent = {i: _moment(ti, "queued_when") for i, ti in rent.items()}
    waiting_sent = {i: _moment(utility[i], "queued_when") for i in waiting}
    assert max(rent_sent.values()) <= min(waiting_sent.values()), (rent_sent, waiting_sent)
    # A rent task and a utility task sent in the same loop (two slots freed at once) go to two
    # workers and start a few milliseconds apart in either order (measured on Celery: 6 ms); every
    # utility task sent in a later loop starts after every rent task.
    rent_starts = [_moment(ti, "start_date") for ti in rent.values()]
    later = {i: _moment(utility[i], "start_date") for i in waiting if waiting_sent[i] > max(rent_sent.values())}
    assert len(later) >= 2 and max(rent_starts) < min(later.values()), (sorted(rent_starts), later)
    # The order changed nothing else: both runs billed every organization.
    with engine.connect() as conn:
        drafted = conn.execute(
            sa.text("SELECT count(*) FROM invoices WHERE organization_id = ANY(:o)"), {"o": routine + critical}
        ).scalar()
    assert drafted == ROUTINE_ORGANIZATIONS + CRITICAL_ORGANIZATIONS
