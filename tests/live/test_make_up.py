"""What `make up` runs (`tentman dev up`), with the CeleryExecutor and nothing but the quickstart done:
the embedded broker starts, both workers come up, a rent run bills the demo data, `make down` stops
everything it started."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

from support.databases import create_database, drop_database
from support.live import poll
from tentman.db import create_engine_from_uri
from tentman.dev.airflow_stack import AirflowApi, free_port
from tentman.dev.broker import ping
from tentman.dev.local import airflow_metadata_uri, with_database
from tentman.names import RENT_DAG_ID

pytestmark = pytest.mark.live


def _cli(*args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tentman.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_make_up_with_celery_starts_its_broker_and_workers_and_bills(pg_admin_uri, tmp_path):
    tentman_db, metadata_db = create_database(pg_admin_uri, "tentman_up"), create_database(pg_admin_uri, "airflow_up")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TENTMAN_"))}
    env.update(
        {
            "TENTMAN_LOCAL_DIR": str(tmp_path / "local"),
            "AIRFLOW_CONN_TENTMAN_DB": with_database(pg_admin_uri, tentman_db),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_metadata_uri(with_database(pg_admin_uri, metadata_db)),
            "TENTMAN_RENT_SCHEDULE": "manual",
            "TENTMAN_UTILITY_SCHEDULE": "manual",
        }
    )
    home = tmp_path / "local" / "airflow"
    port = free_port()
    engine = create_engine_from_uri(with_database(pg_admin_uri, tentman_db))
    try:
        up = _cli("dev", "up", "--port", str(port), "--executor", "celery", "--workers", "2", env=env)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert "executor CeleryExecutor, broker redis://127.0.0.1:" in up.stdout
        assert sorted(p.stem for p in home.glob("*.pid")) == sorted(
            ["api-server", "broker", "dag-processor", "scheduler", "triggerer", "worker-1", "worker-2"]
        )
        passwords = json.loads((home / "passwords.json").read_text())
        api = AirflowApi(f"http://127.0.0.1:{port}", "admin", passwords["admin"])
        response = api.trigger(RENT_DAG_ID, {"billing_month": "2026-12"})
        response.raise_for_status()
        run = api.wait(RENT_DAG_ID, response.json()["dag_run_id"], timeout=600, poll=2)
        assert run["state"] == "success"
        with engine.connect() as conn:
            # The demo's December rent: every active organization billed, by the Celery workers.
            assert conn.execute(sa.text("SELECT count(DISTINCT organization_id) FROM invoice_runs")).scalar() == 3
        hosts = {ti["hostname"] for ti in api.task_instances(RENT_DAG_ID, run["dag_run_id"]).values()}
        assert hosts <= {"worker-1", "worker-2"}
        broker_port = int(up.stdout.split("broker redis://127.0.0.1:")[1].split("/")[0])
    finally:
        down = _cli("dev", "down", env=env)
        engine.dispose()
    assert down.returncode == 0 and "broker" in down.stdout, down.stdout + down.stderr
    poll(lambda: not ping(broker_port), timeout=30, what="the broker stopped")
    assert list(home.glob("*.pid")) == []
    drop_database(pg_admin_uri, tentman_db)
    drop_database(pg_admin_uri, metadata_db)


def test_an_unknown_executor_is_refused_naming_the_accepted_ones(tmp_path):
    env = dict(os.environ, TENTMAN_LOCAL_DIR=str(tmp_path / "local"))
    out = _cli("dev", "up", "--executor", "kubernetes", env=env, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == "tentman: error: executor 'kubernetes' is not supported; expected one of local, celery"
    assert not (tmp_path / "local" / "airflow").exists()
