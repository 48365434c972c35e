"""End to end on live Airflow: api-server, scheduler, dag-processor, triggerer (LocalExecutor).

Everything goes through the public interfaces a user has: the REST API v2 with a token, and the
`airflow` CLI. The stack runs on its own fresh metadata and TentMan databases; every test scopes
its runs to its own organizations (`organization_ids`) so tests do not see each other's data.
"""

from __future__ import annotations

import itertools
import json
import time
from datetime import date, datetime
from decimal import Decimal

import httpx
import pytest
import sqlalchemy as sa

from support.factories import add_charge, add_lease, add_organization, inject_invoice_fault, set_billing_settings
from support.live import Api, live_stack, poll
from support.priority import critical_before_routine
from tentman.names import DAG_IDS, RENT_DAG_ID, SCHEDULES_DAG_ID, UTILITY_DAG_ID

pytestmark = pytest.mark.live

RETRY_DELAY_S = 3


@pytest.fixture(scope="module")
def live(pg_admin_uri, tmp_path_factory):
    """A running Airflow stack on fresh databases; stopped (every process) at the end."""
    extra = {"TENTMAN_ORG_TASK_RETRIES": "3", "TENTMAN_ORG_TASK_RETRY_DELAY_SECONDS": str(RETRY_DELAY_S)}
    with live_stack(pg_admin_uri, tmp_path_factory.mktemp("airflow_live"), extra_env=extra) as (stack, engine, _):
        yield stack, engine


@pytest.fixture(scope="module")
def admin(live):
    stack, _ = live
    api = Api(stack.base_url, "admin")
    for dag_id in DAG_IDS:
        api.client.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
    return api


def _orgs_with_leases(engine, prefix: str, rents: list[list[str]]) -> tuple[list[int], list[list[int]]]:
    orgs, leases = [], []
    with engine.begin() as conn:
        for i, org_rents in enumerate(rents):
            org = add_organization(conn, f"{prefix} {i}")
            orgs.append(org)
            leases.append([add_lease(conn, org, date(2025, 1, 1), None, rent) for rent in org_rents])
    return orgs, leases


def _count(engine, sql: str, **params) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def test_trigger_through_rest_with_params(live, admin):
    _, engine = live
    orgs, leases = _orgs_with_leases(engine, "Rest", [["1000.00", "1200.00"], ["800.00"]])
    with engine.begin() as conn:
        add_charge(conn, leases[0][0], "50.00", date(2027, 2, 15))  # Feb 15..28 = 14 days: 50 * 14 / 28 = 25.00
    response = admin.trigger(RENT_DAG_ID, {"billing_month": "2027-02", "organization_ids": orgs})
    assert response.status_code == 200, response.text
    run = admin.wait(RENT_DAG_ID, response.json()["dag_run_id"])
    assert run["state"] == "success"
    tis = admin.task_instances(RENT_DAG_ID, run["dag_run_id"])
    assert {tis[("bill_organization", i)]["rendered_map_index"] for i in (0, 1)} == {
        f"Rest 0 (#{orgs[0]})",
        f"Rest 1 (#{orgs[1]})",
    }
    with engine.connect() as conn:
        totals = dict(
            conn.execute(
                sa.text(
                    "SELECT lease_id, total FROM invoices "
                    "WHERE billing_period_start = '2027-02-01' AND organization_id = ANY(:o)"
                ),
                {"o": orgs},
            ).all()
        )
        runs = conn.execute(
            sa.text(
                "SELECT organization_id, status, total_leases, success_count "
                "FROM invoice_runs WHERE dag_run_id = :r ORDER BY 1"
            ),
            {"r": run["dag_run_id"]},
        ).all()
    assert totals == {
        leases[0][0]: Decimal("1025.00"),
        leases[0][1]: Decimal("1200.00"),
        leases[1][0]: Decimal("800.00"),
    }
    assert runs == [(orgs[0], "completed", 2, 2), (orgs[1], "completed", 1, 1)]

    # What the UI shows: the DAG's docs and trigger-form params, and per-organization log lines.
    details = admin.client.get(f"/dags/{RENT_DAG_ID}/details").json()
    assert "Monthly rent generation" in details["doc_md"]
    assert set(details["params"]) == {"billing_month", "organization_ids", "proration_method", "dry_run"}
    log = admin.client.get(
        f"/dags/{RENT_DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances/bill_organization/logs/1",
        params={"map_index": 0},
        headers={"Accept": "application/json"},
    )
    assert log.status_code == 200, log.text
    assert f"Rest 0 (#{orgs[0]}): status=completed leases=2 success=2" in log.text


@pytest.mark.parametrize(
    "conf, named",
    [
        ({"billing_month": "2026-13"}, "billing_month"),
        ({"billing_month": "26-01"}, "billing_month"),
        ({"proration_method": "actualdaysinmonth"}, "proration_method"),
        ({"organization_ids": []}, "organization_ids"),
        ({"dry_run": "yes"}, "dry_run"),
    ],
)
def test_bad_param_is_refused_and_nothing_written(live, admin, conf, named):
    _, engine = live
    before = _count(engine, "SELECT count(*) FROM invoice_runs") + _count(engine, "SELECT count(*) FROM invoices")
    response = admin.trigger(RENT_DAG_ID, conf)
    assert response.status_code == 400
    assert f"Invalid input for param {named}" in response.json()["detail"]
    assert (
        _count(engine, "SELECT count(*) FROM invoice_runs") + _count(engine, "SELECT count(*) FROM invoices") == before
    )


def test_unknown_organization_fails_the_first_task_and_writes_nothing(live, admin):
    _, engine = live
    response = admin.trigger(RENT_DAG_ID, {"organization_ids": [987654321]})
    assert response.status_code == 200
    run = admin.wait(RENT_DAG_ID, response.json()["dag_run_id"])
    assert run["state"] == "failed"
    tis = admin.task_instances(RENT_DAG_ID, run["dag_run_id"])
    assert tis[("resolve_billing_period", -1)]["state"] == "failed"
    assert tis[("resolve_billing_period", -1)]["try_number"] == 1  # a bad parameter is not retried
    # Nothing written by this run. (Not a count of every row: the stack's own scheduled runs, started
    # when the module unpaused the DAGs, may still be writing theirs.)
    assert _count(engine, "SELECT count(*) FROM invoice_runs WHERE dag_run_id = :r", r=run["dag_run_id"]) == 0


def test_transient_fault_is_retried_with_growing_delays_and_others_not_rerun(live, admin):
    _, engine = live
    orgs, leases = _orgs_with_leases(engine, "Flaky", [["900.00"], ["700.00"]])
    with engine.begin() as conn:
        inject_invoice_fault(conn, orgs[0], failures=2)  # the first two attempts fail, the third works
    response = admin.trigger(RENT_DAG_ID, {"billing_month": "2027-03", "organization_ids": orgs})
    run = admin.wait(RENT_DAG_ID, response.json()["dag_run_id"])
    assert run["state"] == "success"
    tis = admin.task_instances(RENT_DAG_ID, run["dag_run_id"])
    assert tis[("bill_organization", 0)]["try_number"] == 3
    assert tis[("bill_organization", 1)]["try_number"] == 1
    tries = admin.tries(RENT_DAG_ID, run["dag_run_id"], "bill_organization", 0)
    assert [t["state"] for t in tries] == ["failed", "failed", "success"]
    gaps = [
        (datetime.fromisoformat(b["start_date"]) - datetime.fromisoformat(a["end_date"])).total_seconds()
        for a, b in itertools.pairwise(tries)
    ]
    # Exponential backoff from RETRY_DELAY_S, doubling: at least 3 s, then at least 6 s.
    assert gaps[0] >= RETRY_DELAY_S and gaps[1] >= 2 * RETRY_DELAY_S and gaps[1] > gaps[0]
    assert (
        _count(
            engine,
            "SELECT count(*) FROM invoices WHERE organization_id = ANY(:o) AND billing_period_start = '2027-03-01'",
            o=orgs,
        )
        == 2
    )


def test_clearing_one_organization_reruns_only_it_and_the_aggregation(live, admin):
    _, engine = live
    orgs, leases = _orgs_with_leases(engine, "Clear", [["500.00", "600.00"], ["650.00"], ["400.00"]])
    response = admin.trigger(RENT_DAG_ID, {"billing_month": "2027-04", "organization_ids": orgs})
    run_id = response.json()["dag_run_id"]
    assert admin.wait(RENT_DAG_ID, run_id)["state"] == "success"
    invoices_before = _count(engine, "SELECT count(*) FROM invoices WHERE organization_id = ANY(:o)", o=orgs)

    # What the UI's "Clear" on one mapped instance with "Downstream" does.
    cleared = admin.client.post(
        f"/dags/{RENT_DAG_ID}/clearTaskInstances",
        json={
            "dag_run_id": run_id,
            "task_ids": [["bill_organization", 1]],
            "include_downstream": True,
            "only_failed": False,
            "reset_dag_runs": True,
            "dry_run": False,
        },
    )
    assert cleared.status_code == 200, cleared.text
    assert sorted((t["task_id"], t["map_index"]) for t in cleared.json()["task_instances"]) == [
        ("bill_organization", 1),
        ("reconcile_invoice_runs", -1),
        ("record_invoice_runs", -1),
    ]
    poll(
        lambda: (
            admin.task_instances(RENT_DAG_ID, run_id)[("reconcile_invoice_runs", -1)]["try_number"] == 2
            and admin.run(RENT_DAG_ID, run_id)["state"] == "success"
        )
    )
    tis = admin.task_instances(RENT_DAG_ID, run_id)
    assert {k: v["try_number"] for k, v in tis.items()} == {
        ("resolve_billing_period", -1): 1,
        ("list_organizations", -1): 1,
        ("bill_organization", 0): 1,
        ("bill_organization", 1): 2,
        ("bill_organization", 2): 1,
        ("record_invoice_runs", -1): 2,
        ("reconcile_invoice_runs", -1): 2,
    }
    assert (
        _count(engine, "SELECT count(*) FROM invoices WHERE organization_id = ANY(:o)", o=orgs) == invoices_before == 4
    )
    assert _count(engine, "SELECT count(*) FROM invoice_runs WHERE dag_run_id = :r", r=run_id) == 3


def _backfill_runs(admin, dag_id: str) -> list[dict]:
    response = admin.client.get(f"/dags/{dag_id}/dagRuns", params={"run_type": "backfill", "limit": 100})
    response.raise_for_status()
    return response.json()["dag_runs"]


def _wait_backfill(admin, dag_id: str, expected_runs: int, timeout: float = 600) -> list[dict]:
    """Wait until the scheduler has run the backfill's runs and marked the backfill completed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = _backfill_runs(admin, dag_id)
        backfills = admin.client.get("/backfills", params={"dag_id": dag_id}).json()["backfills"]
        if (
            len(runs) >= expected_runs
            and all(r["state"] in ("success", "failed") for r in runs)
            and backfills
            and all(b["completed_at"] for b in backfills)
        ):
            return runs
        time.sleep(2)
    raise TimeoutError(f"backfill of {dag_id} did not finish: {[(r['dag_run_id'], r['state']) for r in runs]}")


def test_backfill_three_months_then_reprocess(live, admin):
    stack, engine = live
    orgs, leases = _orgs_with_leases(engine, "Backfill", [["1000.00", "1100.00"], ["900.00"]])
    with engine.begin() as conn:
        late = add_lease(conn, orgs[1], date(2026, 8, 10), None, "1550.00")  # starts mid-August
    conf = f'{{"organization_ids": {orgs}}}'
    # Backfills cover the past only. Ticks of 0 2 26 * * on 2026-06-26, 07-26 and 08-26 bill
    # July, August and September 2026.
    out = stack.airflow(
        "backfill",
        "create",
        "--dag-id",
        RENT_DAG_ID,
        "--from-date",
        "2026-06-01",
        "--to-date",
        "2026-08-31",
        "--dag-run-conf",
        conf,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    runs = _wait_backfill(admin, RENT_DAG_ID, 3)
    assert len(runs) == 3 and all(r["state"] == "success" for r in runs)

    def counts():
        with engine.connect() as conn:
            per_month = dict(
                conn.execute(
                    sa.text(
                        """SELECT billing_period_start, count(*) FROM invoices
                   WHERE organization_id = ANY(:o) AND status = 'draft'
                   GROUP BY 1"""
                    ),
                    {"o": orgs},
                ).all()
            )
            dupes = conn.execute(
                sa.text(
                    """SELECT count(*) FROM (SELECT lease_id, billing_period_start FROM invoices
                   WHERE organization_id = ANY(:o)
                   GROUP BY 1, 2 HAVING count(*) > 1) d"""
                ),
                {"o": orgs},
            ).scalar()
            run_rows = conn.execute(
                sa.text(
                    "SELECT dag_run_id, count(*) FROM invoice_runs "
                    "WHERE organization_id = ANY(:o) AND dag_run_id LIKE 'backfill%' GROUP BY 1"
                ),
                {"o": orgs},
            ).all()
            aug_total = conn.execute(
                sa.text("SELECT total FROM invoices WHERE lease_id = :l AND billing_period_start = '2026-08-01'"),
                {"l": late},
            ).scalar()
        return per_month, dupes, sorted(run_rows), aug_total

    per_month, dupes, run_rows, aug_total = counts()
    # July: 3 leases; August and September: 4 (one lease starts Aug 10).
    assert per_month == {date(2026, 7, 1): 3, date(2026, 8, 1): 4, date(2026, 9, 1): 4}
    assert dupes == 0
    assert [n for _, n in run_rows] == [2, 2, 2]
    assert aug_total == Decimal("1100.00")  # Aug 10..31 = 22 of 31 days: 1550 * 22 / 31 = 1100.00

    last_completed = "SELECT min(completed_at) FROM invoice_runs WHERE organization_id = ANY(:o)"
    with engine.connect() as conn:
        first_pass = conn.execute(sa.text(last_completed), {"o": orgs}).scalar()
    out = stack.airflow(
        "backfill",
        "create",
        "--dag-id",
        RENT_DAG_ID,
        "--from-date",
        "2026-06-01",
        "--to-date",
        "2026-08-31",
        "--dag-run-conf",
        conf,
        "--reprocess-behavior",
        "completed",
        check=False,
    )
    assert out.returncode == 0, out.stderr
    poll(lambda: len(admin.client.get("/backfills", params={"dag_id": RENT_DAG_ID}).json()["backfills"]) == 2)
    runs = _wait_backfill(admin, RENT_DAG_ID, 3)
    assert all(r["state"] == "success" for r in runs)
    assert counts() == (per_month, 0, run_rows, aug_total)
    with engine.connect() as conn:  # every organization of every month was billed again
        assert conn.execute(sa.text(last_completed), {"o": orgs}).scalar() > first_pass


def test_utility_dag_through_rest(live, admin):
    _, engine = live
    orgs, leases = _orgs_with_leases(engine, "Utility", [["1000.00"]])
    with engine.begin() as conn:
        statement = conn.execute(
            sa.text(
                """INSERT INTO utility_statements (organization_id, lease_id, utility_type, period_start, period_end,
                                                  amount, status)
               VALUES (:o, :l, 'water', '2027-05-01', '2027-05-31', 33.10, 'finalized') RETURNING id"""
            ),
            {"o": orgs[0], "l": leases[0][0]},
        ).scalar_one()
    for _ in range(2):  # the second run finds nothing left to bill
        response = admin.trigger(UTILITY_DAG_ID, {"billing_month": "2027-06", "organization_ids": orgs})
        assert admin.wait(UTILITY_DAG_ID, response.json()["dag_run_id"])["state"] == "success"
    with engine.connect() as conn:
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM invoice_lines WHERE source_id = :s AND line_type = 'utility'"),
                {"s": statement},
            ).scalar()
            == 1
        )
        assert conn.execute(
            sa.text("SELECT total FROM invoices WHERE lease_id = :l AND invoice_type = 'utility'"), {"l": leases[0][0]}
        ).scalar() == Decimal("33.10")
        assert (
            conn.execute(
                sa.text("SELECT run_type FROM invoice_runs WHERE organization_id = :o LIMIT 1"), {"o": orgs[0]}
            ).scalar()
            == "utility"
        )


def test_login_is_required_and_viewers_cannot_trigger(live, admin):
    stack, _ = live
    anonymous = httpx.get(f"{stack.base_url}/api/v2/dags", timeout=30)
    assert anonymous.status_code == 401
    anonymous_trigger = httpx.post(
        f"{stack.base_url}/api/v2/dags/{RENT_DAG_ID}/dagRuns", json={"logical_date": None}, timeout=30
    )
    assert anonymous_trigger.status_code == 401
    viewer = Api(stack.base_url, "viewer")
    assert viewer.client.get("/dags").status_code == 200
    assert viewer.trigger(RENT_DAG_ID, {"billing_month": "2027-07"}).status_code == 403
    bad_login = httpx.post(f"{stack.base_url}/auth/token", json={"username": "admin", "password": "wrong"}, timeout=30)
    assert bad_login.status_code == 401


def test_cli_trigger_with_a_dry_run_writes_nothing(live, admin):
    stack, engine = live
    orgs, leases = _orgs_with_leases(engine, "Preview", [["1234.00"]])
    out = stack.airflow(
        "dags",
        "trigger",
        RENT_DAG_ID,
        "--conf",
        f'{{"billing_month": "2027-08", "organization_ids": {orgs}, "dry_run": true}}',
        "-o",
        "json",
    )
    assert out.returncode == 0, out.stderr
    run_id = json.loads(out.stdout.strip().splitlines()[-1])[0]["dag_run_id"]  # logs come first
    assert admin.wait(RENT_DAG_ID, run_id)["state"] == "success"
    # The preview is in the organization task's result (XCom) and log; nothing is in the database.
    xcom = admin.client.get(
        f"/dags/{RENT_DAG_ID}/dagRuns/{run_id}/taskInstances/bill_organization/xcomEntries/return_value",
        params={"map_index": 0, "deserialize": True},
    )
    assert xcom.status_code == 200, xcom.text
    preview = xcom.json()["value"]
    assert (preview["organization_id"], preview["invoices_created"], preview["amount_billed"]) == (
        orgs[0],
        1,
        "1234.00",
    )
    # Of this run's month and this run: the scheduled run of the latest tick, which bills every
    # organization once the DAG is unpaused, may have billed these organizations' own month.
    assert (
        _count(
            engine,
            "SELECT count(*) FROM invoices WHERE organization_id = ANY(:o) AND billing_period_start = :month",
            o=orgs,
            month=date(2027, 8, 1),
        )
        == 0
    )
    assert _count(engine, "SELECT count(*) FROM invoice_runs WHERE dag_run_id = :run_id", run_id=run_id) == 0


def test_rent_organizations_start_before_waiting_utility_ones(live, admin):
    """Critical before routine: with one billing slot, a rent run triggered while a utility run's
    organizations wait for it gets every one of its organization tasks started first."""
    _, engine = live
    critical_before_routine(admin, engine, billing_slots=1)


def test_organization_schedules_dag_bills_at_the_local_hour_once_cleared_or_not(live, admin):
    """New York, rent on the 20th at 06:00 local: the 10:00 UTC tick of January 20 bills nothing, the
    11:00 one bills February; the whole tick cleared and re-run, and the next tick, bill it no more.
    (Ticks of January 2026: Airflow runs no logical date in the future.)"""
    _, engine = live
    [org], [[lease]] = _orgs_with_leases(engine, "Hudson", [["2100.00"]])
    with engine.begin() as conn:
        set_billing_settings(
            conn, org, updated_by="live test", timezone="America/New_York", rent_schedule_day=20, rent_schedule_hour=6
        )

    def tick(at: str) -> dict:
        response = admin.client.post(f"/dags/{SCHEDULES_DAG_ID}/dagRuns", json={"logical_date": at, "conf": {}})
        assert response.status_code == 200, response.text
        return admin.wait(SCHEDULES_DAG_ID, response.json()["dag_run_id"])

    def billed() -> list[tuple]:
        with engine.connect() as conn:
            return conn.execute(
                sa.text(
                    "SELECT i.billing_period_start, i.total, r.dag_id, r.status FROM invoices i "
                    "JOIN invoice_runs r ON r.id = i.invoice_run_id WHERE i.lease_id = :l"
                ),
                {"l": lease},
            ).all()

    early = tick("2026-01-20T10:00:00Z")
    assert early["state"] == "success" and billed() == []
    due = tick("2026-01-20T11:00:00Z")
    assert due["state"] == "success"
    tis = admin.task_instances(SCHEDULES_DAG_ID, due["dag_run_id"])
    assert tis[("bill_organization", 0)]["rendered_map_index"] == f"Hudson 0 (#{org})"
    assert billed() == [(date(2026, 2, 1), Decimal("2100.00"), SCHEDULES_DAG_ID, "completed")]

    # The whole tick cleared (the UI's "Clear" on the run): it bills the same period into the same row.
    cleared = admin.client.post(
        f"/dags/{SCHEDULES_DAG_ID}/clearTaskInstances",
        json={"dag_run_id": due["dag_run_id"], "only_failed": False, "reset_dag_runs": True, "dry_run": False},
    )
    assert cleared.status_code == 200, cleared.text
    poll(
        lambda: (
            admin.task_instances(SCHEDULES_DAG_ID, due["dag_run_id"])[("reconcile_invoice_runs", -1)]["try_number"] == 2
            and admin.run(SCHEDULES_DAG_ID, due["dag_run_id"])["state"] == "success"
        )
    )
    assert tick("2026-01-20T12:00:00Z")["state"] == "success"
    assert billed() == [(date(2026, 2, 1), Decimal("2100.00"), SCHEDULES_DAG_ID, "completed")]
    one_row = "SELECT count(*) FROM invoice_runs WHERE organization_id = :o AND billing_period_start = '2026-02-01'"
    assert _count(engine, one_row, o=org) == 1
