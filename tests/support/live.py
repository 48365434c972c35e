"""Live Airflow for end-to-end tests: a stack of real processes on fresh databases, and a REST client."""

from __future__ import annotations

import contextlib
import time
import uuid
from pathlib import Path

from support.databases import create_database, drop_database
from tentman.db import create_engine_from_uri
from tentman.migrate import upgrade
from tentman.names import DAG_IDS
from tentman.settings import billing_pool, billing_pool_slots
from tentman_dev.airflow_stack import (
    AirflowApi,
    AirflowStack,
    free_port,
    isolated_environment,
    read_metadata,
    write_passwords,
)
from tentman_dev.local import airflow_metadata_uri, with_database

PASSWORDS = {"admin": uuid.uuid4().hex, "viewer": uuid.uuid4().hex}


class Api(AirflowApi):
    """The REST client, logged in as one of the test users."""

    def __init__(self, base_url: str, user: str | None):
        super().__init__(base_url, user, PASSWORDS.get(user) if user else None)


@contextlib.contextmanager
def live_stack(
    pg_admin_uri: str,
    home: Path,
    *,
    tentman_admin_uri: str | None = None,
    extra_env: dict | None = None,
    executor: str = "local",
    broker_url: str | None = None,
    workers: int = 0,
    schedulers: int = 1,
):
    """Start api-server, scheduler, dag-processor and triggerer (and, with the CeleryExecutor, its
    workers) on fresh databases; stop them all after.

    Airflow's metadata goes to `pg_admin_uri`'s server; the TentMan DB too, unless
    `tentman_admin_uri` names another server (the fault tests restart that one).
    Yields (stack, TentMan engine, TentMan DB URI).
    """
    tentman_server = tentman_admin_uri or pg_admin_uri
    tentman_db = create_database(tentman_server, "tentman_live")
    tentman_uri = with_database(tentman_server, tentman_db)
    engine = create_engine_from_uri(tentman_uri, pool_pre_ping=True)
    upgrade(engine, with_application_tables=True)
    port = free_port()
    write_passwords(home / "passwords.json", PASSWORDS)

    def stack_on(metadata_db: str) -> AirflowStack:
        base = isolated_environment(
            tentman_uri=tentman_uri, metadata_uri=airflow_metadata_uri(with_database(pg_admin_uri, metadata_db))
        )
        return AirflowStack.for_executor(
            base,
            home=home,
            port=port,
            executor=executor,
            broker_url=broker_url,
            workers=workers,
            schedulers=schedulers,
            worker_concurrency=2,
            # No hourly tick of the schedules DAG beside a test's own runs: the tests of that DAG
            # trigger each tick themselves, with the logical date it stands for.
            extra_env={"TENTMAN_SCHEDULES_TICK": "manual", **(extra_env or {})},
        )

    template = _metadata_template(pg_admin_uri, stack_on)
    metadata_db = create_database(pg_admin_uri, "airflow_live", template=template)
    stack = stack_on(metadata_db)
    try:
        stack.start()
        stack.wait_healthy(timeout=240)
        for dag_id in DAG_IDS:
            stack.wait_for_dag(dag_id, timeout=240)
        yield stack, engine, tentman_uri
    finally:
        stack.kill()
        engine.dispose()
        drop_database(tentman_server, tentman_db)
        drop_database(pg_admin_uri, metadata_db)


# Airflow metadata databases as AirflowStack.migrate() leaves them (migrated, the billing pool
# created), by server and pool: a stack's own metadata database is a copy of one, made in well under
# a second instead of the ten that `airflow db migrate` and `airflow pools set` take.
_METADATA_TEMPLATES: dict[tuple[str, str, int], str] = {}


def _metadata_template(pg_admin_uri: str, stack_on) -> str:
    """The template for the stacks `stack_on(metadata_db)` makes, migrated by the first of them."""
    env = stack_on("postgres").env
    key = (pg_admin_uri, billing_pool(env), billing_pool_slots(env))
    if key not in _METADATA_TEMPLATES:
        template = create_database(pg_admin_uri, "airflow_tpl")
        stack_on(template).migrate()
        _METADATA_TEMPLATES[key] = template
    return _METADATA_TEMPLATES[key]


def drop_metadata_templates(pg_admin_uri: str) -> None:
    """Drop the server's metadata templates (conftest, before the server goes)."""
    for key in [key for key in _METADATA_TEMPLATES if key[0] == pg_admin_uri]:
        drop_database(pg_admin_uri, _METADATA_TEMPLATES.pop(key))


def wait_for_due_runs_to_end(stack: AirflowStack, timeout: float = 300) -> None:
    """Until no unpaused DAG has a tick due that the scheduler has not yet started, and no run is queued
    or running: e.g. the latest tick of each scheduled DAG, which an unpaused DAG runs once
    (`CronTriggerTimetable` without catchup). Such a run bills every organization present when it lists
    them; a scenario that adds its organizations after it ended has them billed by its own runs alone."""
    settled = (
        "SELECT NOT EXISTS (SELECT FROM dag WHERE NOT is_paused AND next_dagrun_create_after <= now()) "
        "AND NOT EXISTS (SELECT FROM dag_run WHERE state IN ('queued', 'running'))"
    )
    poll(lambda: read_metadata(stack.env, settled), timeout=timeout, what="no DAG run due, queued or running")


def poll(condition, timeout: float = 300, interval: float = 1, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout:.0f}s")
        time.sleep(interval)


def make_slow(engine, organization_id: int, seconds: int, month: str) -> None:
    """The first invoice row written for the organization and month sleeps inside PostgreSQL (test-only).

    Scoped to the month: the stack's own scheduled runs (unpausing a DAG runs its latest tick)
    may bill the same organization for another month meanwhile.
    """
    org = int(organization_id)
    period_start = f"{month}-01"
    with engine.begin() as conn:
        conn.exec_driver_sql(f"""
            CREATE SEQUENCE test_slow_{org};
            CREATE FUNCTION test_slow_{org}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF nextval('test_slow_{org}') = 1 THEN PERFORM pg_sleep({int(seconds)}); END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER test_slow_{org} BEFORE INSERT ON invoices FOR EACH ROW
            WHEN (NEW.organization_id = {org} AND NEW.invoice_type = 'rent'
                  AND NEW.billing_period_start = DATE '{period_start}')
            EXECUTE FUNCTION test_slow_{org}();""")
