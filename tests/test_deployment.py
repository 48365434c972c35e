"""docker-compose.yaml: valid against the Compose specification, and configured like the live tests.

No Docker engine runs here: Debian's `docker-compose` validates and resolves the file offline
(`docker-compose config`), and the resolved settings are compared with those the live end-to-end
tests run Airflow with (tentman.dev.airflow_stack.stack_environment).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tentman.dev.airflow_stack import FAILURE_DETECTION, stack_environment, with_local_settings
from tentman.dev.local import REPO_ROOT

COMPOSE = REPO_ROOT / "docker-compose.yaml"
SERVICES = {"postgres", "airflow-init", "api-server", "scheduler", "dag-processor", "triggerer"}
CELERY_SERVICES = {"redis", "airflow-worker"}


def secrets_env(**overrides) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TENTMAN"))}
    env.update(
        {
            "POSTGRES_PASSWORD": secrets.token_hex(8),
            "AIRFLOW_DB_PASSWORD": secrets.token_hex(8),
            "TENTMAN_DB_PASSWORD": secrets.token_hex(8),
            "AIRFLOW_JWT_SECRET": secrets.token_urlsafe(64),
            "AIRFLOW_FERNET_KEY": "x" * 43 + "=",
            "AIRFLOW_ADMIN_PASSWORD": secrets.token_hex(8),
        }
    )
    env.update(overrides)
    return env


def compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is required (make tools installs Debian's package)"
    return subprocess.run(
        [binary, "-f", str(COMPOSE), "--project-directory", str(REPO_ROOT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def resolved(env: dict[str, str], *profiles: str) -> dict:
    flags = [arg for p in profiles for arg in ("--profile", p)]
    out = compose(*flags, "config", env=env)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def test_compose_file_is_valid():
    out = compose("config", "-q", env=secrets_env())
    assert out.returncode == 0, out.stderr
    out = compose("--profile", "celery", "config", "-q", env=secrets_env(AIRFLOW_EXECUTOR="CeleryExecutor"))
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    "missing",
    [
        "AIRFLOW_JWT_SECRET",
        "POSTGRES_PASSWORD",
        "TENTMAN_DB_PASSWORD",
        "AIRFLOW_DB_PASSWORD",
        "AIRFLOW_FERNET_KEY",
        "AIRFLOW_ADMIN_PASSWORD",
    ],
)
def test_every_secret_comes_from_the_environment(missing):
    env = secrets_env()
    del env[missing]
    out = compose("config", "-q", env=env)
    assert out.returncode != 0
    assert f"set {missing}" in out.stderr


def test_services_volumes_and_healthchecks():
    config = resolved(secrets_env())
    # Without the profile only the LocalExecutor services start.
    assert {n for n, svc in config["services"].items() if not svc.get("profiles")} == SERVICES
    assert config["services"]["postgres"]["image"] == "postgres:16"
    assert "postgres-data:/var/lib/postgresql/data:rw" in config["services"]["postgres"]["volumes"]
    assert "postgres-data" in config["volumes"]
    for name in SERVICES - {"airflow-init"}:
        assert "healthcheck" in config["services"][name], name
    assert config["services"]["airflow-init"]["command"] == ["bash", "/opt/tentman/deploy/airflow-init.sh"]
    init_script = (REPO_ROOT / "deploy" / "airflow-init.sh").read_text()
    assert "airflow db migrate" in init_script and "tentman db upgrade" in init_script
    # The metadata and TentMan databases are separate, each with its own role.
    postgres_init = (REPO_ROOT / "deploy" / "postgres-init.sh").read_text()
    assert (
        "CREATE DATABASE airflow OWNER airflow" in postgres_init
        and "CREATE DATABASE tentman OWNER tentman" in postgres_init
    )
    # The bundle is built into the image with its pinned requirements.
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "pip install --no-cache-dir -r requirements.lock" in dockerfile
    # Airflow imports $AIRFLOW_HOME/config/airflow_local_settings.py: the billing tasks' preload.
    assert "ENV AIRFLOW_HOME=/opt/airflow" in dockerfile
    assert "COPY config/airflow_local_settings.py /opt/airflow/config/airflow_local_settings.py" in dockerfile


def test_settings_match_what_the_live_tests_run():
    jwt = secrets.token_urlsafe(64)
    config = resolved(secrets_env(AIRFLOW_JWT_SECRET=jwt, TENTMAN_DB_PASSWORD="tm-pw"))
    live = stack_environment({}, home=Path("/tmp/x"), port=8080)
    for name in ("api-server", "scheduler", "dag-processor", "triggerer"):
        env = config["services"][name]["environment"]
        for key in (
            "AIRFLOW__CORE__EXECUTOR",
            "AIRFLOW__CORE__AUTH_MANAGER",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS",
            "AIRFLOW__CORE__MAX_MAP_LENGTH",
            "AIRFLOW__CORE__LOAD_EXAMPLES",
        ):
            assert str(env[key]) == live[key], (name, key)
        assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False"  # login required
        assert int(env["AIRFLOW__CORE__MAX_MAP_LENGTH"]) >= 10_000  # one mapped task per organization
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == jwt and len(jwt) >= 64
        assert env["AIRFLOW_CONN_TENTMAN_DB"] == "postgresql://tentman:tm-pw@postgres:5432/tentman"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres:5432/airflow")
    raw = COMPOSE.read_text()
    assert "${AIRFLOW_JWT_SECRET:?" in raw  # from the environment, never a value in the file


def test_celery_profile_adds_redis_and_workers():
    config = resolved(secrets_env(AIRFLOW_EXECUTOR="CeleryExecutor"), "celery")
    assert set(config["services"]) == SERVICES | CELERY_SERVICES
    assert all(config["services"][name]["profiles"] == ["celery"] for name in CELERY_SERVICES)
    worker = config["services"]["airflow-worker"]
    assert worker["command"] == ["airflow", "celery", "worker"]
    assert worker["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert worker["environment"]["AIRFLOW__CELERY__BROKER_URL"] == "redis://redis:6379/0"
    assert config["services"]["scheduler"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    # The broker keeps what it accepted across a restart, as the live tests' broker does.
    assert "--appendonly" in config["services"]["redis"]["command"]
    # The failure-detection settings the live Celery tests run with (tests/live/test_celery.py).
    live = stack_environment(
        {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://airflow@postgres:5432/airflow"},
        home=Path("/tmp/x"),
        port=8080,
        executor="celery",
        broker_url="redis://redis:6379/0",
    )
    for name in ("scheduler", "airflow-worker", "api-server", "triggerer"):
        env = config["services"][name]["environment"]
        assert {key: str(env[key]) for key in FAILURE_DETECTION} == FAILURE_DETECTION, name
        assert {key: live[key] for key in FAILURE_DETECTION} == FAILURE_DETECTION
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql")
    assert live["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+postgresql+psycopg2://airflow@postgres:5432/airflow"


def test_no_secret_is_committed():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.split()
    assert ".env" not in tracked and ".env.example" in tracked
    for line in (REPO_ROOT / ".env.example").read_text().splitlines():
        key = line.split("=", 1)[0]
        if line and not line.startswith("#") and any(word in key for word in ("PASSWORD", "SECRET", "FERNET")):
            assert line.split("=", 1)[1] == "", line


def test_airflow_init_script_migrates_both_databases_and_creates_the_billing_pool(airflow_home, pg_admin_uri, tmp_path):
    """deploy/airflow-init.sh (the compose init service), run natively: on the tests' metadata DB
    and an empty TentMan database."""
    from support.databases import create_database, drop_database
    from tentman.db import create_engine_from_uri
    from tentman.dev.local import with_database
    from tentman.migrate import current_revision, head_revision

    tentman_db = create_database(pg_admin_uri, "tentman_init")
    passwords = tmp_path / "auth" / "passwords.json"
    env = dict(
        os.environ,
        AIRFLOW_CONN_TENTMAN_DB=with_database(pg_admin_uri, tentman_db),
        AIRFLOW_ADMIN_PASSWORD="a-secret",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(passwords),
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin",
        TENTMAN_BILLING_POOL="tentman_billing",
        TENTMAN_BILLING_POOL_SLOTS="12",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    engine = create_engine_from_uri(with_database(pg_admin_uri, tentman_db))
    try:
        out = subprocess.run(
            ["bash", str(REPO_ROOT / "deploy" / "airflow-init.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        pool = subprocess.run(
            ["airflow", "pools", "get", "tentman_billing", "--output", "json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert int(json.loads(pool.stdout)[0]["slots"]) == 12
        assert json.loads(passwords.read_text()) == {"admin": "a-secret"}
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()
        drop_database(pg_admin_uri, tentman_db)


def test_airflow_components_preload_the_billing_tasks_imports():
    """With config/ on the path (compose: $AIRFLOW_HOME/config), importing Airflow — what every
    component does first — loads what a billing task would otherwise import in each task process."""
    code = (
        "import sys, airflow.settings\n"
        "print(sorted(m for m in ('psycopg', 'sqlalchemy.dialects.postgresql.psycopg', 'tentman.runs.steps', "
        "'tentman.orchestration.dag_factory') if m in sys.modules))\n"
    )
    env = with_local_settings({"PATH": os.environ["PATH"]})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == str(
        ["psycopg", "sqlalchemy.dialects.postgresql.psycopg", "tentman.orchestration.dag_factory", "tentman.runs.steps"]
    )
