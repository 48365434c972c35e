"""The DAG files: parse cleanly and cheaply, and run end to end with dag.test() on real databases."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from support.dags import DAGS, load_dag
from support.databases import create_database, drop_database
from support.factories import (
    add_charge,
    add_lease,
    add_organization,
    add_statement,
    inject_invoice_fault,
    set_billing_settings,
)
from tentman.names import (
    BILL_ORGANIZATION_TASK,
    DAG_IDS,
    DEFAULT_PRORATION_METHOD,
    LIST_ORGANIZATIONS_TASK,
    RECORD_RUNS_TASK,
    RENT_DAG_ID,
    RESOLVE_PERIOD_TASK,
    SCHEDULES_DAG_ID,
    TASK_IDS,
    UTILITY_DAG_ID,
)
from tentman.settings import RENT_SCHEDULE, SCHEDULES_TICK, UTILITY_SCHEDULE
from tentman_dev.local import REPO_ROOT, with_database

pytestmark = pytest.mark.airflow


# What parsing a DAG file may import of the package: names, settings and the Airflow glue that
# declares the DAG — never the billing engines, the run steps, SQLAlchemy or a database connection.
PARSE_TIME_MODULES = {
    "tentman",
    "tentman.names",
    "tentman.settings",
    "tentman.orchestration",
    "tentman.orchestration.dag_factory",
    "tentman.orchestration.params",
    "tentman.orchestration.alerts",
}


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_dag_files_parse_without_touching_the_billing_code(dag_id):
    code = (
        "import sys, runpy\n"
        f"runpy.run_path({str(DAGS / f'{dag_id}.py')!r})\n"
        "print(sorted(m for m in sys.modules if m == 'tentman' or m.startswith('tentman.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PATH": ""})
    assert set(ast.literal_eval(out.stdout.strip().splitlines()[-1])) == PARSE_TIME_MODULES


def test_rent_dag_definition(airflow_home, monkeypatch):
    for name in (
        "TENTMAN_ORG_TASK_RETRIES",
        "TENTMAN_MAX_ACTIVE_ORGANIZATIONS",
        "TENTMAN_RENT_PRIORITY_WEIGHT",
        "TENTMAN_UTILITY_PRIORITY_WEIGHT",
    ):
        monkeypatch.delenv(name, raising=False)
    dag = load_dag(RENT_DAG_ID)
    from airflow.sdk import CronTriggerTimetable

    assert isinstance(dag.timetable, CronTriggerTimetable)
    assert dag.timetable.expression == RENT_SCHEDULE and str(dag.timetable.timezone) == "UTC"
    assert dag.catchup is False and dag.max_active_runs == 1
    assert {"tentman", "billing", "rent"} <= set(dag.tags)
    assert "Monthly rent generation" in dag.doc_md
    # The doc states the schedule the DAG runs on, and the default proration method, from their definitions.
    assert "Runs at 02:00 UTC on day 26 of every month (cron `0 2 26 * *`)." in " ".join(dag.doc_md.split())
    assert f"else\n`{DEFAULT_PRORATION_METHOD.value}`" in dag.doc_md
    assert set(dag.params.keys()) == {"billing_month", "organization_ids", "proration_method", "dry_run"}
    # Null: each organization's own method (its billing settings), else ActualDaysInMonth.
    assert dag.params["proration_method"] is None and dag.params["dry_run"] is False
    assert [t.task_id for t in dag.topological_sort()] == list(TASK_IDS)
    org_task = dag.get_task(BILL_ORGANIZATION_TASK)
    assert org_task.retries == 10
    assert org_task.retry_delay == timedelta(minutes=1)
    assert org_task.retry_exponential_backoff == 2.0
    assert org_task.max_retry_delay == timedelta(hours=1)
    assert org_task.max_active_tis_per_dagrun == 5
    assert org_task.pool == "default_pool"  # the billing pool is opt-in: a stock Airflow has no other
    assert dag.get_task(LIST_ORGANIZATIONS_TASK).pool == "default_pool"
    # What `astro dev init`'s DAG tests check of every DAG: tags, and default_args retries of at least 2.
    assert dag.default_args["retries"] >= 2 and dag.default_args["owner"] == "billing"
    assert dag.get_task(LIST_ORGANIZATIONS_TASK).retries == dag.default_args["retries"]
    assert dag.get_task(RECORD_RUNS_TASK).trigger_rule == "all_done"
    # Critical before routine: every rent task waits in the queue with weight 100, utility's with 1.
    assert {(t.priority_weight, str(t.weight_rule)) for t in dag.tasks} == {(100, "absolute")}


@pytest.mark.parametrize(
    "schedule, words",
    [
        ("0 2 26 * *", "at 02:00 UTC on day 26 of every month (cron `0 2 26 * *`)"),
        ("30 7 1 * *", "at 07:30 UTC on day 1 of every month (cron `30 7 1 * *`)"),
        ("0 3 * * 1", "at 03:00 UTC every Monday (cron `0 3 * * 1`)"),
        ("0 3 * * 7", "at 03:00 UTC every Sunday (cron `0 3 * * 7`)"),
        ("0 * * * *", "every hour on the hour (cron `0 * * * *`)"),
        ("15 * * * *", "every hour at minute 15 (cron `15 * * * *`)"),
        ("* * * * *", "on the cron schedule `* * * * *` (UTC)"),
        ("0 2 26 1 *", "on the cron schedule `0 2 26 1 *` (UTC)"),
        ("0 2 * * 1-5", "on the cron schedule `0 2 * * 1-5` (UTC)"),
        ("@daily", "on the cron schedule `@daily` (UTC)"),
        (None, "only when triggered (no schedule)"),
    ],
)
def test_the_dag_docs_state_the_schedule_in_words(schedule, words, airflow_home):
    from tentman.orchestration.dag_factory import schedule_in_words

    assert schedule_in_words(schedule) == words


# A cron between backticks, as the docs write one.
CRON_IN_DOCS = re.compile(r"`((?:[0-9*/,-]+ ){4}[0-9*/,-]+)`")


def _default_schedules_named_in(text: str) -> list[str]:
    """The default schedules of the DAGs (or their schedule variables) that `text` names, rent's first."""
    names = {
        RENT_SCHEDULE: (RENT_DAG_ID, "TENTMAN_RENT_SCHEDULE"),
        UTILITY_SCHEDULE: (UTILITY_DAG_ID, "TENTMAN_UTILITY_SCHEDULE"),
        SCHEDULES_TICK: (SCHEDULES_DAG_ID, "TENTMAN_SCHEDULES_TICK"),
    }
    return [schedule for schedule, named_by in names.items() if any(name in text for name in named_by)]


def test_the_docs_state_the_default_schedules_of_the_settings():
    """README and docs/ copy the default schedules (prose cannot read tentman.settings): each cron they
    state is the default of the DAG or variable its line names (else the line before)."""
    stated = []
    for path in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]:
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if crons := CRON_IN_DOCS.findall(line):
                named = _default_schedules_named_in(line) or _default_schedules_named_in(lines[number - 1])
                assert crons == named, f"{path.name}:{number + 1}: {line}"
                stated += crons
    assert {RENT_SCHEDULE, UTILITY_SCHEDULE, SCHEDULES_TICK} <= set(stated)


def test_retry_and_concurrency_are_configurable(airflow_home, monkeypatch):
    monkeypatch.setenv("TENTMAN_ORG_TASK_RETRIES", "3")
    monkeypatch.setenv("TENTMAN_MAX_ACTIVE_ORGANIZATIONS", "16")
    monkeypatch.setenv("TENTMAN_RENT_SCHEDULE", "manual")
    monkeypatch.setenv("TENTMAN_BILLING_POOL", "tentman_billing")
    monkeypatch.setenv("TENTMAN_RENT_PRIORITY_WEIGHT", "7")
    dag = load_dag(RENT_DAG_ID)
    org_task = dag.get_task(BILL_ORGANIZATION_TASK)
    assert (org_task.retries, org_task.max_active_tis_per_dagrun, org_task.pool) == (3, 16, "tentman_billing")
    assert (org_task.priority_weight, str(org_task.weight_rule)) == (7, "absolute")
    assert type(dag.timetable).__name__ == "NullTimetable"  # "manual": no schedule


def _states(dag_run) -> dict:
    from airflow.utils.session import create_session

    with create_session() as session:
        return {
            (ti.task_id, ti.map_index): (ti.state, ti.rendered_map_index)
            for ti in dag_run.get_task_instances(session=session)
        }


def _xcom_keys(dag_run) -> set:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return set(
            session.query(XComModel.task_id, XComModel.key)
            .filter(XComModel.dag_id == dag_run.dag_id, XComModel.run_id == dag_run.run_id)
            .distinct()
            .all()
        )


def _xcom_value(dag_run, task_id: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel.value)
            .filter(XComModel.dag_id == dag_run.dag_id, XComModel.run_id == dag_run.run_id)
            .filter(XComModel.task_id == task_id, XComModel.key == "return_value")
            .one()
        )
    return XComModel.deserialize_value(row)


@pytest.fixture
def tentman_conn(db_uri, monkeypatch, airflow_home):
    monkeypatch.setenv("AIRFLOW_CONN_TENTMAN_DB", db_uri)
    return db_uri


def test_dag_test_run_bills_every_organization_and_records_a_failing_one(engine, tentman_conn):
    with engine.begin() as conn:
        a = add_organization(conn, "Alpha Homes")
        b = add_organization(conn, "Broken Estates")
        c = add_organization(conn, "Cedar Lofts", currency="CAD")
        add_organization(conn, "Dormant", is_active=False)
        a1 = add_lease(conn, a, date(2025, 1, 1), None, "1500.00")
        add_charge(conn, a1, "75.00", date(2025, 1, 1))
        a2 = add_lease(conn, a, date(2026, 2, 10), None, "1500.00")  # 1500 * 19 / 28 = 1017.86
        a_bad = add_lease(conn, a, date(2025, 1, 1), None, "-5.00")
        add_lease(conn, b, date(2025, 1, 1), None, "900.00")
        c1 = add_lease(conn, c, date(2025, 1, 1), date(2026, 2, 14), "2800.00")  # 2800 * 14 / 28 = 1400.00
        inject_invoice_fault(conn, b)

    dag = load_dag(RENT_DAG_ID)
    dag_run = dag.test(logical_date=datetime(2026, 1, 26, 2, tzinfo=UTC))

    assert dag_run.state == "failed"  # organization B failed: the run says so
    states = _states(dag_run)
    assert states[(RESOLVE_PERIOD_TASK, -1)][0] == "success"
    assert states[(LIST_ORGANIZATIONS_TASK, -1)][0] == "success"
    assert {k[1]: v for k, v in states.items() if k[0] == BILL_ORGANIZATION_TASK} == {
        0: ("success", f"Alpha Homes (#{a})"),
        1: ("failed", f"Broken Estates (#{b})"),
        2: ("success", f"Cedar Lofts (#{c})"),
    }
    assert states[(RECORD_RUNS_TASK, -1)][0] == "failed"

    with engine.connect() as conn:
        totals = dict(
            conn.execute(
                sa.text(
                    "SELECT lease_id, total FROM invoices "
                    "WHERE billing_period_start = '2026-02-01' AND status = 'draft'"
                )
            ).all()
        )
        runs = {r.organization_id: r for r in conn.execute(sa.text("SELECT * FROM invoice_runs"))}
    assert totals == {a1: Decimal("1575.00"), a2: Decimal("1017.86"), c1: Decimal("1400.00")}
    assert set(runs) == {a, b, c}
    assert (runs[a].status, runs[a].total_leases, runs[a].success_count, runs[a].failure_count) == (
        "completed_with_errors",
        3,
        2,
        1,
    )
    assert runs[a].errors == [{"lease_id": a_bad, "error": "monthly_rent -5.00 is negative"}]
    assert runs[b].status == "failed" and "injected fault" in runs[b].errors[0]["error"]
    assert (runs[c].status, runs[c].success_count) == ("completed", 1)
    assert all(r.dag_id == RENT_DAG_ID and r.dag_run_id == dag_run.run_id for r in runs.values())
    assert all(r.billing_period_start == date(2026, 2, 1) for r in runs.values())


def test_an_unmigrated_tentman_database_fails_the_first_task_at_once(pg_admin_uri, airflow_home, monkeypatch):
    name = create_database(pg_admin_uri, "tentman_unmigrated")
    monkeypatch.setenv("AIRFLOW_CONN_TENTMAN_DB", with_database(pg_admin_uri, name))
    try:
        run = load_dag(RENT_DAG_ID).test(logical_date=datetime(2026, 1, 26, 2, tzinfo=UTC))
        states = _states(run)
        assert run.state == "failed"
        # Failed, not up_for_retry: no retry can migrate a schema.
        assert states[(RESOLVE_PERIOD_TASK, -1)][0] == "failed"
        assert states[(LIST_ORGANIZATIONS_TASK, -1)][0] == "upstream_failed"
    finally:
        drop_database(pg_admin_uri, name)


def test_dag_test_rerun_is_idempotent_and_bad_params_write_nothing(engine, tentman_conn):
    with engine.begin() as conn:
        a = add_organization(conn, "Alpha Homes")
        for i in range(5):
            lease = add_lease(conn, a, date(2025, 1, 1), None, f"{1000 + i}.00")
            add_charge(conn, lease, "10.00", date(2025, 1, 1))
    dag = load_dag(RENT_DAG_ID)
    for _ in range(2):
        dag_run = dag.test(logical_date=datetime(2026, 1, 26, 2, tzinfo=UTC), run_conf={"billing_month": "2026-03"})
        assert dag_run.state == "success"
    with engine.connect() as conn:
        assert conn.execute(
            sa.text("SELECT count(*), sum(total) FROM invoices WHERE billing_period_start = '2026-03-01'")
        ).one() == (5, Decimal("5060.00"))
        assert conn.execute(sa.text("SELECT count(*) FROM invoice_lines")).scalar() == 10
    # One XCom per task: a dict-returning TaskFlow task would otherwise also push one XCom per key,
    # each an API call, which at 2,000 organizations is half of Airflow's cost per task.
    assert _xcom_keys(dag_run) == {(task_id, "return_value") for task_id in TASK_IDS}
    # Every organization task pulls the whole list to find its own item: ids only, nothing more.
    assert _xcom_value(dag_run, LIST_ORGANIZATIONS_TASK) == [a]

    bad = dag.test(logical_date=datetime(2026, 2, 26, 2, tzinfo=UTC), run_conf={"organization_ids": [4242]})
    assert bad.state == "failed"
    assert _states(bad)[(RESOLVE_PERIOD_TASK, -1)][0] == "failed"
    with engine.connect() as conn:
        assert (
            conn.execute(sa.text("SELECT count(*) FROM invoices WHERE billing_period_start = '2026-03-01'")).scalar()
            == 5
        )
        assert (
            conn.execute(sa.text("SELECT count(*) FROM invoices WHERE billing_period_start <> '2026-03-01'")).scalar()
            == 0
        )


def test_utility_dag_definition(airflow_home, monkeypatch):
    for name in (
        "TENTMAN_ORG_TASK_RETRIES",
        "TENTMAN_MAX_ACTIVE_ORGANIZATIONS",
        "TENTMAN_RENT_PRIORITY_WEIGHT",
        "TENTMAN_UTILITY_PRIORITY_WEIGHT",
    ):
        monkeypatch.delenv(name, raising=False)
    dag = load_dag(UTILITY_DAG_ID)
    assert dag.timetable.expression == UTILITY_SCHEDULE and str(dag.timetable.timezone) == "UTC"
    assert dag.catchup is False and dag.max_active_runs == 1
    assert {"tentman", "billing", "utility"} <= set(dag.tags)
    assert "Utility billing" in dag.doc_md
    assert "Runs at 03:00 UTC every Monday (cron `0 3 * * 1`)." in " ".join(dag.doc_md.split())
    assert set(dag.params.keys()) == {"billing_month", "organization_ids", "dry_run"}
    org_task = dag.get_task(BILL_ORGANIZATION_TASK)
    assert (
        org_task.retries,
        org_task.retry_delay,
        org_task.retry_exponential_backoff,
        org_task.max_retry_delay,
        org_task.max_active_tis_per_dagrun,
    ) == (10, timedelta(minutes=1), 2.0, timedelta(hours=1), 5)
    assert dag.get_task(RECORD_RUNS_TASK).trigger_rule == "all_done"
    assert {(t.priority_weight, str(t.weight_rule)) for t in dag.tasks} == {(1, "absolute")}


def test_utility_dag_test_run_bills_each_statement_once(engine, tentman_conn):
    with engine.begin() as conn:
        a = add_organization(conn, "Alpha Homes")
        b = add_organization(conn, "Broken Estates")
        a1 = add_lease(conn, a, date(2025, 1, 1))
        a2 = add_lease(conn, a, date(2024, 1, 1), date(2026, 10, 31), status="ended")  # moved out
        _s1 = add_statement(conn, a, a1, Decimal("42.17"))
        _s2 = add_statement(conn, a, a2, Decimal("27.30"), date(2026, 10, 1), date(2026, 10, 31))
        s_bad = add_statement(conn, a, a1, None)
        b1 = add_lease(conn, b, date(2025, 1, 1))
        add_statement(conn, b, b1, Decimal("5.00"))
        inject_invoice_fault(conn, b)

    dag = load_dag(UTILITY_DAG_ID)
    # The Monday run of Dec 7, 2026 bills December.
    first = dag.test(logical_date=datetime(2026, 12, 7, 3, tzinfo=UTC))
    assert first.state == "failed"
    assert _states(first)[(BILL_ORGANIZATION_TASK, 1)] == ("failed", f"Broken Estates (#{b})")
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TRIGGER test_fault_{b} ON invoices"))
    second = dag.test(logical_date=datetime(2026, 12, 14, 3, tzinfo=UTC))
    assert second.state == "success"

    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT lease_id, billing_period_start, total FROM invoices "
                "WHERE invoice_type = 'utility' ORDER BY lease_id"
            )
        ).all()
        assert rows == [
            (a1, date(2026, 12, 1), Decimal("42.17")),
            (a2, date(2026, 12, 1), Decimal("27.30")),
            (b1, date(2026, 12, 1), Decimal("5.00")),
        ]
        assert conn.execute(sa.text("SELECT count(*), count(DISTINCT source_id) FROM invoice_lines")).one() == (3, 3)
        assert conn.execute(
            sa.text("SELECT id FROM utility_statements WHERE invoice_line_id IS NULL")
        ).scalars().all() == [s_bad]
        runs = conn.execute(
            sa.text(
                "SELECT dag_run_id, organization_id, run_type, status, total_leases, success_count, failure_count, "
                "errors FROM invoice_runs ORDER BY started_at, organization_id"
            )
        ).all()
    by_run = {}
    for r in runs:
        by_run.setdefault(r.dag_run_id, {})[r.organization_id] = r
    assert set(by_run) == {first.run_id, second.run_id}
    assert by_run[first.run_id][a].status == "completed" and by_run[first.run_id][b].status == "failed"
    assert by_run[first.run_id][a].errors == [
        {"lease_id": a1, "error": f"utility statement {s_bad} of lease {a1} has no amount"}
    ]
    assert (by_run[first.run_id][a].total_leases, by_run[first.run_id][a].success_count) == (2, 2)
    # The second run finds only the bad statement still pending for A, and bills B.
    assert (by_run[second.run_id][a].total_leases, by_run[second.run_id][a].failure_count) == (1, 1)
    assert by_run[second.run_id][b].status == "completed" and by_run[second.run_id][b].success_count == 1
    assert all(r.run_type == "utility" for r in runs)


def test_more_organizations_than_max_map_length_fail_the_listing_in_words(engine, tentman_conn, monkeypatch):
    with engine.begin() as conn:
        for name in ("Alpha", "Beta", "Gamma"):
            add_lease(conn, add_organization(conn, name), date(2025, 1, 1))
    monkeypatch.setenv("AIRFLOW__CORE__MAX_MAP_LENGTH", "2")
    run = load_dag(RENT_DAG_ID).test(logical_date=datetime(2026, 1, 26, 2, tzinfo=UTC))
    states = _states(run)
    assert run.state == "failed"
    assert states[(LIST_ORGANIZATIONS_TASK, -1)][0] == "failed"  # at once: retrying cannot shrink the list
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM invoices")).scalar() == 0


def test_the_max_map_length_message_names_the_setting_its_value_and_the_count(airflow_home):
    from tentman.orchestration.dag_factory import too_many_organizations_message

    assert too_many_organizations_message(10_000, 4096) == (
        "10,000 organizations to bill, one mapped task each, but Airflow's [core] max_map_length is 4,096: "
        "set AIRFLOW__CORE__MAX_MAP_LENGTH (or [core] max_map_length) to at least 10,000 on every Airflow "
        "component (the api-server enforces it), restart them, then clear this run's list_organizations task. "
        "Nothing was billed."
    )


def test_dag_test_run_honours_each_organizations_billing_settings(engine, tentman_conn):
    with engine.begin() as conn:
        held = add_organization(conn, "Held Homes")
        own = add_organization(conn, "Own Method")
        plain = add_organization(conn, "Plain Homes")
        held_lease = add_lease(conn, held, date(2025, 1, 1), None, "1500.00")
        own_lease = add_lease(conn, own, date(2026, 2, 10), None, "1500.00")  # 19 of February's 28 days
        plain_lease = add_lease(conn, plain, date(2026, 2, 10), None, "1500.00")
        set_billing_settings(conn, held, hold=True, reason="migration")
        set_billing_settings(conn, own, proration_method="ThirtyDayMonth")
    dag = load_dag(RENT_DAG_ID)
    dag_run = dag.test(logical_date=datetime(2026, 1, 26, 2, tzinfo=UTC))  # no params: all organizations

    assert dag_run.state == "success"  # the hold does not fail the run
    states = _states(dag_run)
    assert {k[1]: v[0] for k, v in states.items() if k[0] == BILL_ORGANIZATION_TASK} == {
        0: "success",
        1: "success",
        2: "success",
    }
    assert states[(RECORD_RUNS_TASK, -1)][0] == "success"
    with engine.connect() as conn:
        totals = dict(conn.execute(sa.text("SELECT lease_id, total FROM invoices")).all())
        runs = {r.organization_id: r for r in conn.execute(sa.text("SELECT * FROM invoice_runs"))}
    # 1500 * 19 / 30 = 950.00 (the organization's ThirtyDayMonth); 1500 * 19 / 28 = 1017.86 (the default).
    assert totals == {own_lease: Decimal("950.00"), plain_lease: Decimal("1017.86")}
    assert held_lease not in totals
    assert (runs[held].status, runs[held].total_leases, runs[held].errors) == (
        "on_hold",
        0,
        [{"lease_id": None, "error": "billing hold: migration"}],
    )
    assert {o: r.proration_method for o, r in runs.items()} == {
        held: "ActualDaysInMonth",
        own: "ThirtyDayMonth",
        plain: "ActualDaysInMonth",
    }

    named = dag.test(logical_date=datetime(2026, 2, 26, 2, tzinfo=UTC), run_conf={"organization_ids": [held]})
    assert named.state == "success"
    with engine.connect() as conn:
        assert invoice_for_month(conn, held_lease, date(2026, 3, 1)) == Decimal("1500.00")


def invoice_for_month(conn, lease_id: int, period_start: date):
    return conn.execute(
        sa.text("SELECT total FROM invoices WHERE lease_id = :l AND billing_period_start = :p"),
        {"l": lease_id, "p": period_start},
    ).scalar_one_or_none()
