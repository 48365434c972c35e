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
from tentman_dev.airflow_stack import (
    AirflowApi,
    AirflowStack,
    free_port,
    isolated_environment,
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
    metadata_db = create_database(pg_admin_uri, "airflow_live")
    tentman_uri = with_database(tentman_server, tentman_db)
    engine = create_engine_from_uri(tentman_uri, pool_pre_ping=True)
    upgrade(engine, with_application_tables=True)
    port = free_port()
    base = isolated_environment(
        tentman_uri=tentman_uri, metadata_uri=airflow_metadata_uri(with_database(pg_admin_uri, metadata_db))
    )
    write_passwords(home / "passwords.json", PASSWORDS)
    stack = AirflowStack.for_executor(
        base,
        home=home,
        port=port,
        executor=executor,
        broker_url=broker_url,
        workers=workers,
        schedulers=schedulers,
        worker_concurrency=2,
        extra_env=extra_env,
    )
    try:
        stack.migrate()
        stack.start()
        stack.wait_healthy(timeout=240)
        for dag_id in DAG_IDS:
            stack.wait_for_dag(dag_id, timeout=240)
        yield stack, engine, tentman_uri
    finally:
        stack.stop()
        engine.dispose()
        drop_database(tentman_server, tentman_db)
        drop_database(pg_admin_uri, metadata_db)


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
