"""The bundle installed into a stock Airflow, step by step as docs/deployment.md "Deploy into an
existing Airflow" says, and TentMan's database adopted.

An existing deployment is played by a fresh virtualenv holding only Airflow (requirements.lock:
3.3.2 and its providers) and plain `airflow api-server`, `airflow scheduler` and
`airflow dag-processor` with Airflow's defaults and only what any deployment has (its metadata
database, its DAGs folder, an empty plugins folder, a shared JWT secret, where workers reach the
api-server). TentMan's database already has the application's tables. On top of it, only the
documented steps: `pip install` of the wheel, the two DAG files, the `tentman_db` connection in
Airflow's metadata database, `tentman db check` and `tentman db upgrade`, unpausing the DAGs.
No pool, no local settings, no max_map_length, nothing of this checkout's package: the page and
the DAGs' code come from the installed wheel alone.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa

from support.databases import create_database, drop_database
from support.factories import add_lease, add_organization, add_statement
from support.live import poll
from tentman.application_schema import create_application_tables
from tentman.db import create_engine_from_uri
from tentman.names import DAG_IDS
from tentman_dev.airflow_stack import AirflowStack, free_port, log_server_ports, read_metadata
from tentman_dev.local import REPO_ROOT, airflow_metadata_uri, with_database

pytestmark = [pytest.mark.live, pytest.mark.slow]


def existing_airflow(tmp_path: Path, metadata_uri: str, port: int, venv: Path) -> dict[str, str]:
    """What every Airflow deployment already sets: nothing of TentMan's. Its commands are the venv's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TENTMAN_", "PYTHON"))}
    env.update(
        {
            "AIRFLOW_HOME": str(tmp_path / "airflow"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_uri,
            "AIRFLOW__CORE__DAGS_FOLDER": str(tmp_path / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(tmp_path / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(48),
            "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            # Not a deployment's setting: this machine runs another test's stack beside this one.
            **log_server_ports(),
        }
    )
    return env


def test_both_dags_run_on_a_stock_airflow_with_only_the_documented_steps(
    pg_admin_uri, tmp_path, audited, airflow_venv, dist
):
    tentman_db, metadata_db = create_database(pg_admin_uri, "tentman_stock"), create_database(pg_admin_uri, "af_stock")
    tentman_uri = with_database(pg_admin_uri, tentman_db)
    port = free_port()
    venv = airflow_venv["venv"]
    env = existing_airflow(tmp_path, airflow_metadata_uri(with_database(pg_admin_uri, metadata_db)), port, venv)
    (tmp_path / "dags").mkdir()
    (tmp_path / "plugins").mkdir()
    stack = AirflowStack(
        env=env,
        home=tmp_path / "airflow",
        port=port,
        commands={name: ["airflow", name] for name in ("api-server", "scheduler", "dag-processor")},
    )
    engine = create_engine_from_uri(tentman_uri)
    try:
        stack.airflow("db", "migrate")  # the existing deployment's own metadata database
        with engine.begin() as conn:  # TentMan's database: the application made its tables
            create_application_tables(conn)
        # The documented steps. The wheel (the airflow_venv fixture ran `pip install <wheel>` into
        # this venv, which held Airflow alone); the DAG bundle's two files; the connection, here in
        # Airflow's metadata database.
        for dag_id in DAG_IDS:
            shutil.copy(REPO_ROOT / "dags" / f"{dag_id}.py", tmp_path / "dags")
        stack.airflow("connections", "add", "tentman_db", "--conn-uri", tentman_uri)
        tentman = str(venv / "bin" / "tentman")
        behind = subprocess.run([tentman, "db", "check"], env=env, capture_output=True, text=True)
        assert behind.returncode == 1 and "at revision none (never migrated)" in behind.stdout, behind.stdout
        schema = subprocess.run([tentman, "db", "upgrade"], env=env, capture_output=True, text=True)
        assert schema.returncode == 0, schema.stderr
        checked = subprocess.run([tentman, "db", "check"], env=env, capture_output=True, text=True)
        assert (checked.returncode, checked.stdout.count("\n")) == (0, 1), checked.stdout + checked.stderr
        with engine.begin() as conn:
            orgs = [add_organization(conn, name) for name in ("North", "South", "East")]
            for number, org in enumerate(orgs):
                lease = add_lease(conn, org, date(2025, 1, 1), None, f"{1100 + number}.00")
                add_lease(conn, org, date(2027, 1, 10), None, "900.00")  # moves in mid-month
                add_statement(conn, org, lease, "31.40", date(2026, 12, 1), date(2026, 12, 31))
        stack.start()
        stack.wait_healthy(timeout=240)
        for dag_id in DAG_IDS:
            stack.wait_for_dag(dag_id, timeout=240)
        _airflow_each(stack, [("dags", "unpause", dag_id) for dag_id in DAG_IDS])
        # (Unpausing also starts each DAG's latest scheduled tick: Airflow's catchup=False behaviour.)
        conf = json.dumps({"billing_month": "2027-01"})
        _airflow_each(
            stack, [("dags", "trigger", dag_id, "--run-id", f"stock_{dag_id}", "--conf", conf) for dag_id in DAG_IDS]
        )
        for dag_id in DAG_IDS:
            poll(
                lambda dag_id=dag_id: _state(env, dag_id, f"stock_{dag_id}") == "success",
                timeout=600,
                interval=3,
                what=f"{dag_id} run succeeded",
            )
        with engine.connect() as conn:
            invoices = dict(
                conn.execute(
                    sa.text(
                        "SELECT invoice_type, count(*) FROM invoices "
                        "WHERE organization_id = ANY(:o) AND billing_period_start = '2027-01-01' GROUP BY 1"
                    ),
                    {"o": orgs},
                ).all()
            )
        assert invoices == {"rent": 6, "utility": 3}
        audited(engine)
        # The "Billing runs" page, from the wheel's entry point alone (the plugins folder is empty):
        # its API answers a logged-in user with the runs just billed (the connection from Airflow's
        # metadata database), and its page sends a visitor without a session to Airflow's login.
        import httpx

        base = f"http://127.0.0.1:{port}"
        password = json.loads((tmp_path / "airflow" / "simple_auth_manager_passwords.json.generated").read_text())
        token = httpx.post(f"{base}/auth/token", json={"username": "admin", "password": password["admin"]}, timeout=30)
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        runs = httpx.get(f"{base}/tentman/api/runs", params={"billing_month": "2027-01"}, headers=headers, timeout=30)
        assert runs.status_code == 200, runs.text
        assert runs.json()["total"] == 6  # three organizations, two DAGs (the unpaused ticks bill other months)
        page = httpx.get(f"{base}/tentman/ui/", timeout=30, follow_redirects=False)
        assert page.status_code in (302, 303, 307) and "login" in page.headers["location"], page
        # Upgrades start by pausing both DAGs (docs/deployment.md "Upgrades").
        _airflow_each(stack, [("dags", "pause", dag_id) for dag_id in DAG_IDS])
        assert _paused(env) == set(DAG_IDS)
    finally:
        stack.kill()
        engine.dispose()
        drop_database(pg_admin_uri, tentman_db)
        drop_database(pg_admin_uri, metadata_db)


def _airflow_each(stack: AirflowStack, commands: list[tuple[str, ...]]) -> None:
    """The `airflow` commands, all at once: each spends seconds importing Airflow before its one query."""
    with ThreadPoolExecutor(len(commands)) as pool:
        list(pool.map(lambda args: stack.airflow(*args), commands))


def _paused(env: dict[str, str]) -> set[str]:
    """The paused DAGs, read in the metadata database."""
    return set(read_metadata(env, "SELECT array_agg(dag_id) FROM dag WHERE is_paused") or ())


def _state(env: dict[str, str], dag_id: str, run_id: str) -> str | None:
    """The run's state in the metadata database (one query: `airflow dags list-runs` takes seconds a poll)."""
    return read_metadata(
        env, "SELECT state FROM dag_run WHERE dag_id = :dag_id AND run_id = :run_id", dag_id=dag_id, run_id=run_id
    )
