"""Live Airflow for end-to-end tests: a stack of real processes on fresh databases, and a REST client."""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from pathlib import Path

import httpx
from conftest import create_database, drop_database

from tentman.airflow_stack import AirflowStack, free_port, stack_environment, write_passwords
from tentman.db import create_engine_from_uri
from tentman.local import airflow_metadata_uri, with_database
from tentman.migrate import upgrade

REPO_ROOT = Path(__file__).resolve().parents[1]
RENT = "tentman_monthly_rent_generation"
UTILITY = "tentman_utility_billing"
PASSWORDS = {"admin": uuid.uuid4().hex, "viewer": uuid.uuid4().hex}


class Api:
    """A small REST API v2 client, logged in as one user."""

    def __init__(self, base_url: str, user: str | None):
        headers = {}
        if user:
            token = httpx.post(f"{base_url}/auth/token", json={"username": user, "password": PASSWORDS[user]}, timeout=30)
            token.raise_for_status()
            headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        self.client = httpx.Client(base_url=f"{base_url}/api/v2", headers=headers, timeout=60)

    def trigger(self, dag_id: str, conf: dict) -> httpx.Response:
        return self.client.post(f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})

    def run(self, dag_id: str, run_id: str) -> dict:
        response = self.client.get(f"/dags/{dag_id}/dagRuns/{run_id}")
        response.raise_for_status()
        return response.json()

    def wait(self, dag_id: str, run_id: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.run(dag_id, run_id)
            if run["state"] in ("success", "failed"):
                return run
            time.sleep(1)
        raise TimeoutError(f"{dag_id} run {run_id} still {run['state']} after {timeout}s")

    def task_instances(self, dag_id: str, run_id: str) -> dict:
        response = self.client.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
        response.raise_for_status()
        return {(ti["task_id"], ti["map_index"]): ti for ti in response.json()["task_instances"]}

    def tries(self, dag_id: str, run_id: str, task_id: str, map_index: int) -> list[dict]:
        response = self.client.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/tries")
        response.raise_for_status()
        return sorted(response.json()["task_instances"], key=lambda t: t["try_number"])


@contextlib.contextmanager
def live_stack(pg_admin_uri: str, home: Path, *, tentman_admin_uri: str | None = None, extra_env: dict | None = None):
    """Start api-server, scheduler, dag-processor and triggerer on fresh databases; stop them all after.

    Airflow's metadata goes to `pg_admin_uri`'s server; the TentMan DB too, unless
    `tentman_admin_uri` names another server (the fault tests restart that one).
    Yields (stack, TentMan engine, TentMan DB URI).
    """
    tentman_server = tentman_admin_uri or pg_admin_uri
    tentman_db = create_database(tentman_server, "tentman_live")
    metadata_db = create_database(pg_admin_uri, "airflow_live")
    tentman_uri = with_database(tentman_server, tentman_db)
    engine = create_engine_from_uri(tentman_uri, pool_pre_ping=True)
    upgrade(engine)
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TENTMAN_"))}
    base.update({
        "AIRFLOW_CONN_TENTMAN_DB": tentman_uri,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_metadata_uri(with_database(pg_admin_uri, metadata_db)),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex * 2,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    env = stack_environment(base, home=home, port=port)
    env.update(extra_env or {})
    write_passwords(home / "passwords.json", PASSWORDS)
    stack = AirflowStack(env=env, home=home, port=port)
    try:
        stack.migrate()
        stack.start()
        stack.wait_healthy(timeout=240)
        for dag_id in (RENT, UTILITY):
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
