"""docker-compose.yaml: valid against the Compose specification, and configured like the live tests.

No Docker engine runs here: Debian's `docker-compose` validates and resolves the file offline
(`docker-compose config`), and the resolved settings are compared with those the live end-to-end
tests run Airflow with (tentman_dev.airflow_stack.stack_environment).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tentman.deployment import FAILURE_DETECTION, SCHEDULING
from tentman_dev.airflow_stack import stack_environment, with_local_settings
from tentman_dev.local import REPO_ROOT

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
    config = yaml.safe_load(out.stdout)
    # Debian's docker-compose (1.29) prints every service whatever the profiles; `up` starts those
    # without a profile and those of the profiles given: keep these.
    config["services"] = {
        name: svc
        for name, svc in config["services"].items()
        if not svc.get("profiles") or set(svc["profiles"]) & set(profiles)
    }
    return config


def test_compose_file_is_valid():
    out = compose("config", "-q", env=secrets_env())
    assert out.returncode == 0, out.stderr
    out = compose("--profile", "celery", "config", "-q", env=secrets_env(AIRFLOW__CORE__EXECUTOR="CeleryExecutor"))
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
    # The image is the official one of the pinned Airflow, extended with the wheel (no dev tools).
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    pinned = re.search(r"^apache-airflow==(\S+)$", (REPO_ROOT / "requirements.txt").read_text(), re.M).group(1)
    assert f"ARG AIRFLOW_IMAGE=apache/airflow:{pinned}-python3.11\n" in dockerfile
    assert re.findall(r"^FROM (.*)$", dockerfile, re.M) == ["${AIRFLOW_IMAGE} AS wheel", "${AIRFLOW_IMAGE}"]
    assert (
        '"apache-airflow==${AIRFLOW_VERSION}" \\\n      "$(ls /tmp/dist/tentman_billing-*.whl)[celery,statsd]"'
        in dockerfile
    )
    assert "requirements-dev" not in dockerfile and "-e " not in dockerfile
    # What compose runs from the image: the DAGs folder it names and the init script.
    assert "COPY dags /opt/tentman/dags" in dockerfile
    assert "COPY deploy/airflow-init.sh /opt/tentman/deploy/airflow-init.sh" in dockerfile
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
        # The scheduling settings chosen below Airflow's floor, in compose and in every local stack.
        assert {key: str(env[key]) for key in SCHEDULING} == SCHEDULING == {key: live[key] for key in SCHEDULING}
        assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False"  # login required
        assert int(env["AIRFLOW__CORE__MAX_MAP_LENGTH"]) >= 10_000  # one mapped task per organization
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == jwt and len(jwt) >= 64
        assert env["AIRFLOW_CONN_TENTMAN_DB"] == "postgresql://tentman:tm-pw@postgres:5432/tentman"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres:5432/airflow")
    raw = COMPOSE.read_text()
    assert "${AIRFLOW_JWT_SECRET:?" in raw  # from the environment, never a value in the file


def test_celery_profile_adds_redis_and_workers():
    config = resolved(secrets_env(AIRFLOW__CORE__EXECUTOR="CeleryExecutor"), "celery")
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


AIRFLOW_CONTAINERS = {"airflow-init", "api-server", "scheduler", "dag-processor", "triggerer", "airflow-worker"}


def _airflow_environments(config: dict) -> dict[str, dict]:
    return {name: svc["environment"] for name, svc in config["services"].items() if name in AIRFLOW_CONTAINERS}


def compose_variables() -> set[str]:
    """The variables docker-compose.yaml interpolates (`$${…}` is the container's own)."""
    return set(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)", COMPOSE.read_text()))


def test_every_tentman_setting_reaches_every_airflow_container_from_the_env_file(tmp_path):
    """Each variable tentman.settings reads, set in `.env`, arrives unchanged in every Airflow
    container (LocalExecutor and Celery profiles); compose passes no other TENTMAN_* variable."""
    from tentman.settings import ENVIRONMENT_VARIABLES

    values = {name: f"value-of-{name.lower()}" for name in ENVIRONMENT_VARIABLES}
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TENTMAN"))}
    dotenv = tmp_path / ".env"
    dotenv.write_text("".join(f"{k}={v}\n" for k, v in secrets_env(**values).items() if k not in clean))
    out = compose("--env-file", str(dotenv), "--profile", "celery", "config", env=clean)
    assert out.returncode == 0, out.stderr
    environments = _airflow_environments(yaml.safe_load(out.stdout))
    assert set(environments) == AIRFLOW_CONTAINERS
    for name, env in environments.items():
        assert {k: str(v) for k, v in env.items() if k.startswith("TENTMAN_")} == values, name


def _effective_settings(environ: dict[str, str]) -> tuple:
    """What tentman.settings makes of an environment: every setting it reads, resolved."""
    from unittest import mock

    from tentman import settings
    from tentman.names import RunType

    with mock.patch.dict(os.environ, environ, clear=True):
        return (
            settings.organization_task_policy(),
            settings.billing_pool_slots(),
            settings.priority_weight(RunType.MONTHLY_RENT),
            settings.priority_weight(RunType.UTILITY),
            settings.utility_due_days(),
            settings.rent_schedule(),
            settings.utility_schedule(),
        )


def test_settings_left_unset_in_the_env_file_keep_their_defaults():
    """Unset, each setting reaches the containers empty, which tentman.settings reads as its
    default; the one exception is the pool, which compose opts into (airflow-init creates it)."""
    from dataclasses import replace

    from tentman.settings import BILLING_POOL

    for name, env in _airflow_environments(resolved(secrets_env(), "celery")).items():
        tentman = {k: str(v) for k, v in env.items() if k.startswith("TENTMAN_")}
        assert tentman.pop("TENTMAN_BILLING_POOL") == BILLING_POOL, name
        assert set(tentman.values()) == {""}, name
        policy, *rest = _effective_settings(tentman)
        default_policy, *default_rest = _effective_settings({})
        assert (policy, rest) == (replace(default_policy, pool=policy.pool), default_rest), name


def test_env_example_lists_every_variable_compose_reads():
    """.env.example documents compose's variables: each one compose interpolates, and no other."""
    listed = {
        match.group(1)
        for line in (REPO_ROOT / ".env.example").read_text().splitlines()
        if (match := re.match(r"#? ?([A-Z][A-Z0-9_]*)=", line))
    }
    assert listed == compose_variables()


def test_docs_set_only_variables_compose_reads():
    """Every `NAME=value` put before a docker compose command in the docs is a variable compose
    reads (names that differ from compose's are silently ignored)."""
    docs = [REPO_ROOT / "README.md", REPO_ROOT / "CHANGELOG.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    seen = set()
    for doc in docs:
        for line in doc.read_text().splitlines():
            for command in re.findall(r"((?:[A-Z][A-Z0-9_]*=\S+ )+)docker[ -]compose", line):
                names = set(re.findall(r"([A-Z][A-Z0-9_]*)=", command))
                assert names <= compose_variables(), (doc.name, line)
                seen |= names
    assert {"AIRFLOW__CORE__EXECUTOR", "AIRFLOW__METRICS__STATSD_ON"} <= seen


def test_alert_connections_come_from_the_variables_the_docs_name():
    """The alert channels' connections (docs/operations.md "Alerts") pass straight through under
    Airflow's own names; unset, they are empty, which Airflow reads as no connection (channel off:
    tests/orchestration/test_alerts.py)."""
    import ast
    import importlib.util

    # The connection ids as tentman.orchestration.alerts defines them, read without importing it:
    # importing Airflow here would come before the tests' Airflow environment (conftest.py).
    source = Path(importlib.util.find_spec("tentman.orchestration.alerts").origin).read_text()
    defined = {
        node.targets[0].id: node.value.value
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and isinstance(node.value, ast.Constant)
    }
    names = [f"AIRFLOW_CONN_{defined[key].upper()}" for key in ("SMTP_CONN_ID", "WEBHOOK_CONN_ID")]
    alerts = (REPO_ROOT / "docs" / "operations.md").read_text().split("\n## Alerts\n", 1)[1].split("\n## ", 1)[0]
    values = {name: f"https://hooks.example.test/{name.lower()}" for name in names}
    on, off = resolved(secrets_env(**values), "celery"), resolved(secrets_env(), "celery")
    for name in names:
        assert f"`{name}" in alerts, name
        for service, env in _airflow_environments(on).items():
            assert env[name] == values[name], (service, name)
        for service, env in _airflow_environments(off).items():
            assert env[name] == "", (service, name)


def test_dags_start_paused_and_the_docs_say_how_to_unpause_them():
    """The first `up` bills nothing until someone unpauses the DAGs, as docs/deployment.md says."""
    from tentman.names import DAG_IDS

    for service, env in _airflow_environments(resolved(secrets_env(), "celery")).items():
        assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "True", service
    deployment = (REPO_ROOT / "docs" / "deployment.md").read_text()
    section = deployment.split("\n## Deploy with Docker Compose\n", 1)[1].split("\n## ", 1)[0]
    for dag_id in DAG_IDS:
        assert f"docker compose exec scheduler airflow dags unpause {dag_id}" in section, dag_id


def test_airflow_init_script_migrates_both_databases_and_creates_the_billing_pool(airflow_home, pg_admin_uri, tmp_path):
    """deploy/airflow-init.sh (the compose init service), run natively: on the tests' metadata DB
    and an empty TentMan database."""
    from support.databases import create_database, drop_database
    from tentman.db import create_engine_from_uri
    from tentman.migrate import current_revision, head_revision
    from tentman_dev.local import with_database

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
        "print(sorted(m for m in ('psycopg', 'sqlalchemy.dialects.postgresql.psycopg', 'tentman.runs.bill', "
        "'tentman.orchestration.dag_factory') if m in sys.modules))\n"
    )
    env = with_local_settings({"PATH": os.environ["PATH"]})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == str(
        ["psycopg", "sqlalchemy.dialects.postgresql.psycopg", "tentman.orchestration.dag_factory", "tentman.runs.bill"]
    )


def test_a_forked_task_process_starts_with_airflows_plugins_loaded(tmp_path):
    """The local settings load Airflow's plugins in the process that forks the task processes, at
    its first fork and not at start-up (logging and the database are not configured yet): a task
    process finds them loaded, the "Billing runs" plugin among them, and loads nothing itself."""
    code = (
        "import os, airflow.settings\n"
        "from airflow.sdk import plugins_manager\n"
        "print('at start-up', plugins_manager._get_plugins.cache_info().currsize, flush=True)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    inherited = plugins_manager._get_plugins.cache_info().currsize\n"
        "    plugins, errors = plugins_manager._get_plugins()\n"
        "    print('in the task process', inherited, sorted(p.name for p in plugins), errors, flush=True)\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
    )
    env = with_local_settings(
        {
            "PATH": os.environ["PATH"],
            "AIRFLOW_HOME": str(tmp_path),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        }
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith(("at start-up", "in the task process"))]
    assert lines == ["at start-up 0", "in the task process 1 ['tentman_billing'] {}"], out.stderr


MONITORING_SERVICES = {"statsd-exporter", "prometheus", "grafana"}
AIRFLOW_SERVICES = {"airflow-init", "api-server", "scheduler", "dag-processor", "triggerer"}


def test_monitoring_profile_adds_exporter_prometheus_and_grafana():
    env = secrets_env(AIRFLOW__METRICS__STATSD_ON="True")
    out = compose("--profile", "monitoring", "config", "-q", env=env)
    assert out.returncode == 0, out.stderr
    config = resolved(env, "monitoring")
    services = config["services"]
    assert set(services) == SERVICES | MONITORING_SERVICES
    assert all(services[name]["profiles"] == ["monitoring"] for name in MONITORING_SERVICES)
    assert services["statsd-exporter"]["image"].startswith("prom/statsd-exporter:")
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    # Each component reads its configuration from deploy/monitoring/, where the tests read it.
    mounts = {
        (name, volume.split(":")[0], volume.split(":")[1])
        for name in MONITORING_SERVICES
        for volume in services[name].get("volumes", [])
    }
    monitoring = str(REPO_ROOT / "deploy" / "monitoring")
    assert (
        "statsd-exporter",
        f"{monitoring}/statsd-mapping.yml",
        "/etc/statsd-exporter/mapping.yml",
    ) in mounts
    assert "--statsd.mapping-config=/etc/statsd-exporter/mapping.yml" in services["statsd-exporter"]["command"]
    assert ("prometheus", f"{monitoring}/prometheus.yml", "/etc/prometheus/prometheus.yml") in mounts
    assert ("prometheus", f"{monitoring}/alert-rules.yml", "/etc/prometheus/alert-rules.yml") in mounts
    assert ("grafana", f"{monitoring}/grafana/provisioning", "/etc/grafana/provisioning") in mounts
    assert ("grafana", f"{monitoring}/grafana/dashboards", "/var/lib/grafana/dashboards") in mounts
    # Grafana asks for a login: the Airflow admin's password, from the environment.
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == env["AIRFLOW_ADMIN_PASSWORD"]
    assert services["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    # Prometheus scrapes the exporter's web port and loads the alert rules it mounts.
    prometheus = yaml.safe_load((REPO_ROOT / "deploy" / "monitoring" / "prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["/etc/prometheus/alert-rules.yml"]
    targets = [t for job in prometheus["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["statsd-exporter:9102"]
    assert "--web.listen-address=:9102" in services["statsd-exporter"]["command"]
    # Grafana's provisioned datasource is that Prometheus, with the uid the dashboard uses.
    grafana = REPO_ROOT / "deploy" / "monitoring" / "grafana"
    datasource = yaml.safe_load((grafana / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert [(d["uid"], d["url"]) for d in datasource["datasources"]] == [
        ("tentman-prometheus", "http://prometheus:9090")
    ]
    provider = yaml.safe_load((grafana / "provisioning" / "dashboards" / "tentman.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_airflow_sends_its_metrics_to_the_exporter_when_turned_on():
    """The [metrics] settings of the live metrics test (tests/live/test_metrics.py), on every Airflow service."""
    from support.monitoring import statsd_env

    expected = statsd_env("statsd-exporter", 9125)
    on = resolved(secrets_env(AIRFLOW__METRICS__STATSD_ON="True"), "monitoring")
    off = resolved(secrets_env())
    for name in AIRFLOW_SERVICES:
        env = on["services"][name]["environment"]
        assert {k: str(env[k]) for k in expected} == expected, name
        # Off by default: no StatsD host to resolve without the profile. Nothing filters Airflow's own.
        assert off["services"][name]["environment"]["AIRFLOW__METRICS__STATSD_ON"] == "False"
        assert not any("ALLOW_LIST" in k or "BLOCK_LIST" in k for k in env), name


def _dashboard() -> dict:
    return json.loads(
        (REPO_ROOT / "deploy" / "monitoring" / "grafana" / "dashboards" / "tentman-billing.json").read_text()
    )


def _alert_rules() -> list[dict]:
    rules = yaml.safe_load((REPO_ROOT / "deploy" / "monitoring" / "alert-rules.yml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


def test_dashboard_and_alert_rules_read_only_metrics_that_are_emitted():
    """Every query names metrics that the StatsD exporter's mapping makes of what the billing tasks
    (tentman.orchestration.metrics) and Airflow (its task and DAG-run metrics) send."""
    from support.monitoring import emitted_prometheus_names, metric_names_in, queries

    emitted = emitted_prometheus_names()
    assert _dashboard()["title"] == "TentMan billing"
    read = set()
    for where, expr in queries().items():
        names = metric_names_in(expr)
        assert names, f"{where} reads no metric: {expr}"
        assert names <= set(emitted), f"{where} reads {sorted(names - set(emitted))}, which nothing emits"
        read |= names
    # Every billing metric is on the dashboard or in an alert rule.
    from tentman.orchestration.metrics import METRICS

    for metric in METRICS:
        assert any(emitted[name] == f"airflow.{metric.name}" for name in read), metric.name


def test_dashboard_has_the_panels_the_on_call_engineer_needs():
    titles = [panel["title"] for panel in _dashboard()["panels"]]
    for wanted in (
        "Leases billed per run",
        "Amount drafted per run",
        "Failures per organization",
        "Run durations",
        "Reconciliation violations",
    ):
        assert wanted in titles
    assert any("Task durations" in t for t in titles) and any("Queue waits" in t for t in titles)
    datasources = {panel["datasource"]["uid"] for panel in _dashboard()["panels"]}
    assert datasources == {"tentman-prometheus"}
    assert {rule["alert"] for rule in _alert_rules()} == {
        "TentManBillingRunFailed",
        "TentManOrganizationsFailed",
        "TentManOrganizationAttemptsFailing",
        "TentManLeasesFailing",
        "TentManNoRentRun",
        "TentManQueueWaitHigh",
        "TentManReconciliationViolations",
    }
    # A violation is shown and paged with what the on-call engineer acts on: which organization,
    # run type and check (the DAG too: the schedules DAG bills both run types).
    from support.monitoring import labels_in, queries

    for where in ("panel 'Reconciliation violations' A", "alert TentManReconciliationViolations"):
        assert labels_in(queries()[where]) == {"dag_id", "run_type", "organization_id", "check"}, where
    (rule,) = [rule for rule in _alert_rules() if rule["alert"] == "TentManReconciliationViolations"]
    assert rule["labels"]["severity"] == "page" and "for" not in rule  # pages at once


def test_the_mapping_names_every_metric_the_way_the_exporter_would():
    """The mapping rules, applied like statsd_exporter does (first match wins, `*` = one part)."""
    from support.monitoring import map_statsd_name

    assert map_statsd_name("airflow.tentman.leases_billed", "counter") == ("tentman_leases_billed_total", {})
    assert map_statsd_name("airflow.tentman.engine_duration", "observer") == ("tentman_engine_duration_seconds", {})
    # Its `check`, like every tag, travels in the line and becomes a label.
    assert map_statsd_name("airflow.tentman.reconciliation_violations", "counter") == (
        "tentman_reconciliation_violations_total",
        {},
    )
    assert map_statsd_name("airflow.dagrun.duration.failed", "observer") == (
        "airflow_dagrun_duration_seconds",
        {"state": "failed"},
    )
    assert map_statsd_name("airflow.pool.queued_slots", "gauge") == ("airflow_pool_queued_slots", {})
    # Airflow's pre-3.0 copies, with ids in the name, are dropped; other metrics keep default names.
    assert (
        map_statsd_name("airflow.ti.finish.tentman_monthly_rent_generation.bill_organization.success", "counter")
        is None
    )
    assert map_statsd_name("airflow.dagrun.duration.success.tentman_utility_billing", "observer") is None
    assert map_statsd_name("airflow.scheduler_heartbeat", "counter") == ("airflow_scheduler_heartbeat", {})


def test_monitoring_docs_give_the_metrics_settings_the_live_test_runs():
    """docs/monitoring.md: its [metrics] block and variables are the live test's settings."""
    import configparser

    from support.monitoring import statsd_env

    section = (REPO_ROOT / "docs" / "monitoring.md").read_text()
    block = re.search(r"```ini\n(.*?)```", section, re.S).group(1)
    parser = configparser.ConfigParser()
    parser.read_string(block)
    live = statsd_env("<your StatsD exporter>", 9125)
    assert {f"AIRFLOW__METRICS__{k.upper()}": v for k, v in parser["metrics"].items()} == live
    for key, value in live.items():
        assert f"`{key}`" in section or f"`{key}={value}`" in section, key
    assert "AIRFLOW__METRICS__STATSD_ON=True docker-compose --profile monitoring config -q" in section


def test_monitoring_docs_list_every_metric_and_alert_rule():
    """docs/monitoring.md's tables: a row per billing metric and per alert rule, with its severity."""
    from tentman.orchestration.metrics import METRICS

    rows = [line for line in (REPO_ROOT / "docs" / "monitoring.md").read_text().splitlines() if line.startswith("| `")]
    for metric in METRICS:
        # Three invoice counters share a row: `tentman.invoices_created` / `_updated` / `_removed`.
        short = "_" + metric.name.rsplit("_", 1)[1]
        assert any(f"`{metric.name}`" in row or f"`{short}`" in row for row in rows), metric.name
    for rule in _alert_rules():
        assert any(
            row.startswith(f"| `{rule['alert']}` |") and row.endswith(f"| {rule['labels']['severity']} |")
            for row in rows
        ), rule["alert"]


def _promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    assert binary, "promtool is required (make tools installs Debian's prometheus package)"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)


def test_prometheus_config_alert_rules_and_dashboard_queries_pass_promtool(tmp_path):
    """Prometheus's own checker, offline: the config (with its rule file), the rules, and every
    dashboard query (as a recording rule, Grafana's interval variables set to 5m)."""
    monitoring = REPO_ROOT / "deploy" / "monitoring"
    rules = monitoring / "alert-rules.yml"
    out = _promtool("check", "rules", str(rules))
    assert out.returncode == 0, out.stdout + out.stderr
    config = yaml.safe_load((monitoring / "prometheus.yml").read_text())
    config["rule_files"] = [str(rules)]  # where the container mounts it, here
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    out = _promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert out.returncode == 0, out.stdout + out.stderr
    queries = [
        {"record": f"dashboard:panel{panel['id']}:{target['refId']}", "expr": re.sub(r"\$__\w+", "5m", target["expr"])}
        for panel in _dashboard()["panels"]
        for target in panel["targets"]
    ]
    (tmp_path / "dashboard-queries.yml").write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": queries}]}))
    out = _promtool("check", "rules", str(tmp_path / "dashboard-queries.yml"))
    assert out.returncode == 0, out.stdout + out.stderr


def _rent_alert_time() -> tuple[int, int, int]:
    """Day of month and hour (UTC) from which TentManNoRentRun fires, and the tick's minute: six
    hours after the rent DAG's default schedule, tentman.settings.RENT_SCHEDULE."""
    from tentman.settings import RENT_SCHEDULE

    minute, hour, day, month, weekday = RENT_SCHEDULE.split()
    assert (month, weekday) == ("*", "*") and day.isdigit() and int(hour) + 6 < 24, RENT_SCHEDULE
    return int(day), int(hour) + 6, int(minute)


def test_the_no_rent_run_alert_follows_the_default_rent_schedule():
    """TentManNoRentRun is written for the default schedule; docs/monitoring.md says so, and says to
    change the rule with TENTMAN_RENT_SCHEDULE."""
    from tentman.settings import RENT_SCHEDULE

    day, hour, minute = _rent_alert_time()
    (rule,) = [rule for rule in _alert_rules() if rule["alert"] == "TentManNoRentRun"]
    assert rule["expr"].startswith(f"day_of_month() == {day} and hour() >= {hour}\n"), rule["expr"]
    assert f"{hour - 6:02d}:{minute:02d} UTC schedule on the {day}th" in rule["annotations"]["description"]
    monitoring = (REPO_ROOT / "docs" / "monitoring.md").read_text()
    (row,) = [line for line in monitoring.splitlines() if line.startswith("| `TentManNoRentRun`")]
    assert f"`{RENT_SCHEDULE}`" in row and f"the {day}th from {hour:02d}:00 UTC" in row, row
    assert "`TENTMAN_RENT_SCHEDULE`" in row and "alert-rules.yml" in row, row


def _violations(dag_id: str, run_type: str, organization_id: int, check: str) -> tuple[str, dict]:
    """A series of tentman.reconciliation_violations as the exporter stores it, and the page it makes."""
    labels = {"dag_id": dag_id, "run_type": run_type, "organization_id": str(organization_id), "check": check}
    selector = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    series = f"tentman_reconciliation_violations_total{{{selector}}}"
    page = {
        "exp_labels": {"severity": "page", **labels},
        "exp_annotations": {
            "summary": f"Reconciliation of organization {organization_id} failed check {check} ({run_type})",
            "description": f"{dag_id} found {check} violations in the last hour: its reconcile_invoice_runs task "
            "log and failure alert name the ids; after a fix, `tentman runs reconcile --billing-month <YYYY-MM> "
            f"--run-type {run_type} --organization-id {organization_id}` checks again.",
        },
    }
    return series, page


def test_alert_rules_fire_when_they_should(tmp_path):
    """promtool's rule unit tests: a failed run pages; a missing rent run pages on the day of the
    default schedule, six hours after its tick (the tests' clock starts on 1970-01-01 00:00 UTC, so
    the 26th at 08:00 is 608 h); a reconciliation violation pages for an hour, an organization's
    first one too, and the dashboard's table counts that one whole.

    Evaluation times keep clear of a window's edge: promtool here is Prometheus 2's, whose windows
    include their start, the compose profile's Prometheus 3's do not."""
    day, hour, _ = _rent_alert_time()
    fires = (day - 1) * 24 + hour  # hours from the clock's start
    rent_success = 'airflow_dagrun_duration_seconds_count{dag_id="tentman_monthly_rent_generation", state="success"}'
    failed_utility = 'airflow_dagrun_duration_seconds_count{dag_id="tentman_utility_billing", state="failed"}'
    no_rent = {
        "alertname": "TentManNoRentRun",
        "exp_alerts": [
            {
                "exp_labels": {"severity": "page"},
                "exp_annotations": {
                    "summary": "No successful rent run yet this month",
                    "description": "tentman_monthly_rent_generation has not succeeded since its 02:00 UTC schedule "
                    "on the 26th.",
                },
            }
        ],
    }
    failed_run = {
        "exp_labels": {"severity": "page", "dag_id": "tentman_utility_billing"},
        "exp_annotations": {
            "summary": "Billing run of tentman_utility_billing failed",
            "description": "A tentman_utility_billing run failed in the last hour: see its record_invoice_runs and "
            "reconcile_invoice_runs tasks and the alert e-mail/webhook.",
        },
    }
    first, first_page = _violations("tentman_monthly_rent_generation", "monthly_rent", 3, "rent_coverage")
    again, again_page = _violations("tentman_utility_billing", "utility", 4, "totals")
    from support.monitoring import queries

    table = queries()["panel 'Reconciliation violations' A"]
    tests = {
        "rule_files": [str(REPO_ROOT / "deploy" / "monitoring" / "alert-rules.yml")],
        "evaluation_interval": "10m",
        "tests": [
            {  # The last rent run was the month before: nothing on the 26th by 08:00.
                "interval": "1h",
                "input_series": [{"series": rent_success, "values": "1x700"}],
                "alert_rule_test": [
                    {"eval_time": f"{fires - 1}h", "alertname": "TentManNoRentRun", "exp_alerts": []},
                    {"eval_time": f"{fires + 1}h", **no_rent},
                    {"eval_time": f"{day * 24 + 9}h", "alertname": "TentManNoRentRun", "exp_alerts": []},  # next day
                ],
            },
            {  # No series at all (a new deployment): the same.
                "interval": "1h",
                "input_series": [],
                "alert_rule_test": [{"eval_time": f"{fires + 1}h", **no_rent}],
            },
            {  # The rent run succeeded at 04:00 on the 26th: quiet.
                "interval": "1h",
                "input_series": [{"series": rent_success, "values": f"1x{fires - 5} 2x100"}],
                "alert_rule_test": [{"eval_time": f"{fires + 1}h", "alertname": "TentManNoRentRun", "exp_alerts": []}],
            },
            {  # A utility run failed at 02:15 (scraped every 15 min): the alert pages for the next hour.
                "interval": "15m",
                "input_series": [{"series": failed_utility, "values": "0x8 1x20"}],
                "alert_rule_test": [
                    {"eval_time": "1h", "alertname": "TentManBillingRunFailed", "exp_alerts": []},
                    {"eval_time": "2h30m", "alertname": "TentManBillingRunFailed", "exp_alerts": [failed_run]},
                    {"eval_time": "4h", "alertname": "TentManBillingRunFailed", "exp_alerts": []},
                ],
            },
            {  # Organization 3's first violation (a new series) at 02:15, three more at 02:45; organization
                # 4, whose series has counted one since before, another at 02:15.
                "interval": "15m",
                "input_series": [{"series": first, "values": "_x9 2 2 5x18"}, {"series": again, "values": "1x8 4x20"}],
                "alert_rule_test": [
                    {"eval_time": "1h30m", "alertname": "TentManReconciliationViolations", "exp_alerts": []},
                    {
                        "eval_time": "2h30m",
                        "alertname": "TentManReconciliationViolations",
                        "exp_alerts": [first_page, again_page],
                    },
                    {"eval_time": "3h20m", "alertname": "TentManReconciliationViolations", "exp_alerts": [first_page]},
                    {"eval_time": "4h", "alertname": "TentManReconciliationViolations", "exp_alerts": []},
                ],
            },
            {  # The dashboard's table over the last 4 hours at 05:00: organization 3's five violations,
                # all in its first series' range; organization 4's, counted before the range, not shown.
                "interval": "15m",
                "input_series": [{"series": first, "values": "_x9 2 2 5x18"}, {"series": again, "values": "1x40"}],
                "promql_expr_test": [
                    {
                        "expr": table.replace("$__range", "4h"),
                        "eval_time": "5h",
                        "exp_samples": [
                            {"labels": first.removeprefix("tentman_reconciliation_violations_total"), "value": 5}
                        ],
                    }
                ],
            },
        ],
    }
    (tmp_path / "alert-rules.test.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    out = _promtool("test", "rules", str(tmp_path / "alert-rules.test.yml"))
    assert out.returncode == 0, out.stdout + out.stderr
