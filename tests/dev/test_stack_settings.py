"""The local stacks' executor choices, processes and broker: refused names are named, Celery stacks
get their workers, broker and result backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from tentman_dev.airflow_stack import (
    component_commands,
    component_environments,
    executor_class,
    free_port,
    stack_environment,
)
from tentman_dev.broker import EmbeddedBroker, ping

pytestmark = pytest.mark.unit

METADATA = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://airflow@127.0.0.1:5432/airflow"}


def test_executor_names():
    assert executor_class("local") == "LocalExecutor"
    assert executor_class(" Celery ") == "CeleryExecutor"
    with pytest.raises(ValueError) as err:
        executor_class("kubernetes")
    assert str(err.value) == "executor 'kubernetes' is not supported; expected one of local, celery"


def test_a_celery_stack_has_its_workers_broker_and_result_backend():
    commands = component_commands(executor="celery", workers=2, schedulers=2, worker_concurrency=4)
    assert list(commands) == [
        "api-server", "scheduler", "dag-processor", "triggerer", "scheduler-2", "worker-1", "worker-2",
    ]  # fmt: skip
    assert commands["worker-2"] == ["airflow", "celery", "worker", "-H", "w2@%h", "-c", "4", "-s"]
    assert set(component_environments(commands)) == {"scheduler", "scheduler-2", "worker-1", "worker-2"}
    env = stack_environment(
        dict(METADATA), home=Path("/tmp/x"), port=8080, executor="celery", broker_url="redis://127.0.0.1:6399/0"
    )
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://127.0.0.1:6399/0"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+postgresql+psycopg2://airflow@127.0.0.1:5432/airflow"
    with pytest.raises(ValueError, match="needs a broker URL"):
        stack_environment(dict(METADATA), home=Path("/tmp/x"), port=8080, executor="celery")


def test_a_local_stack_has_no_worker_and_no_broker():
    assert list(component_commands()) == ["api-server", "scheduler", "dag-processor", "triggerer"]
    env = stack_environment(dict(METADATA), home=Path("/tmp/x"), port=8080)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor" and "AIRFLOW__CELERY__BROKER_URL" not in env


def test_the_embedded_broker_starts_answers_and_stops(tmp_path):
    broker = EmbeddedBroker(tmp_path / "broker", free_port())
    broker.start()
    try:
        assert ping(broker.port) and broker.url == f"redis://127.0.0.1:{broker.port}/0"
    finally:
        broker.stop()
    assert not ping(broker.port)


def test_the_sweep_runs_each_size_on_the_executors_that_run_at_it():
    from tentman_dev.bench.scale import sweep_plan

    assert sweep_plan([500, 2000, 10000], "local,celery:2000") == [
        (500, "local"), (2000, "local"), (2000, "celery"), (10000, "local"),
    ]  # fmt: skip
    both = [(500, "local"), (500, "celery"), (2000, "local"), (2000, "celery")]
    assert sweep_plan([500, 2000], "local, celery") == both
    with pytest.raises(ValueError, match="executor 'kubernetes' is not supported"):
        sweep_plan([500], "local,kubernetes")


def test_a_resumed_sweep_keeps_only_points_measured_with_the_same_settings(tmp_path):
    import json

    from tentman_dev.bench.sweep import resumable

    path = tmp_path / "sweep.json"
    assert resumable(path, leases=5, concurrency=8) == []
    kept = {"organizations": 500, "executor": "local", "leases_per_organization": 5, "concurrency": 8}
    other = {"organizations": 2000, "executor": "local", "leases_per_organization": 5, "concurrency": 16}
    path.write_text(json.dumps([kept, other]))
    assert resumable(path, leases=5, concurrency=8) == [kept]
