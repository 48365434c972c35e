"""The benchmark's control DAG (tentman_dev.bench.control): rent's DAG with bodies that do nothing,
and the figures `make bench-scale` reports of it beside billing."""

from __future__ import annotations

import pytest

from tentman.names import BILL_ORGANIZATION_TASK, RECORD_RUNS_TASK, RENT_DAG_ID, TASK_IDS
from tentman_dev.bench import pipeline as bench_pipeline
from tentman_dev.bench import sweep as bench_sweep
from tentman_dev.bench.control import (
    CONTROL_DAG_ID,
    benchmark_dags_folder,
    control_conf,
    id_ranges,
    ids_of_ranges,
)

# What makes a task cost what it costs in Airflow, besides its body.
TASK_SETTINGS = (
    "task_display_name", "pool", "pool_slots", "priority_weight", "weight_rule", "retries", "retry_delay",
    "retry_exponential_backoff", "max_retry_delay", "max_active_tis_per_dagrun", "max_active_tis_per_dag",
    "trigger_rule", "queue", "executor", "execution_timeout", "map_index_template", "multiple_outputs",
    "do_xcom_push", "owner", "depends_on_past", "wait_for_downstream",
)  # fmt: skip
DAG_SETTINGS = ("catchup", "max_active_runs", "max_active_tasks", "max_consecutive_failed_dag_runs")


def _settings(dag) -> dict:
    return {
        "dag": {name: getattr(dag, name) for name in DAG_SETTINGS} | {"timetable": type(dag.timetable).__name__},
        "tasks": {
            t.task_id: {
                # A mapped task has only the settings that apply to it (no do_xcom_push, say).
                **{name: getattr(t, name, "not applicable") for name in TASK_SETTINGS},
                "callbacks": [type(c).__name__ for c in getattr(t, "on_failure_callback", None) or []],
                "upstream": sorted(t.upstream_task_ids),
                "mapped": type(t).__name__,
            }
            for t in dag.tasks
        },
    }


@pytest.fixture
def bench_dags(airflow_home, monkeypatch, tmp_path):
    """The benchmark stack's DAGs folder parsed, with the benchmark's settings (not the defaults)."""
    for name, value in bench_pipeline.measured_stack_settings(concurrency=7, organizations=3000).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TENTMAN_BILLING_POOL", "tentman_billing")
    monkeypatch.setenv("TENTMAN_ORG_TASK_RETRIES", "4")
    folder = benchmark_dags_folder(tmp_path / "dags")
    from airflow import settings
    from airflow.dag_processing.dagbag import DagBag

    # The folder of the DAG bundle dag.test() syncs to the metadata DB before it runs (read at import).
    monkeypatch.setattr(settings, "DAGS_FOLDER", str(folder))
    bag = DagBag(dag_folder=str(folder))
    assert bag.import_errors == {}
    return bag.dags


@pytest.mark.airflow
def test_the_control_dag_has_the_rent_dags_frame_settings_and_graph(bench_dags):
    control, rent = bench_dags[CONTROL_DAG_ID], bench_dags[RENT_DAG_ID]
    assert [t.task_id for t in control.topological_sort()] == list(TASK_IDS)
    assert _settings(control) == _settings(rent)
    organization_task = control.get_task(BILL_ORGANIZATION_TASK)
    assert (organization_task.pool, organization_task.retries, organization_task.max_active_tis_per_dagrun) == (
        "tentman_billing",
        4,
        7,
    )
    assert "bench" in control.tags and "not billing" in control.doc_md
    # The bodies are the control's own: nothing of the billing steps runs.
    assert organization_task.python_callable.__module__ == "tentman_dev.bench.control"


@pytest.mark.airflow
def test_the_control_dag_maps_the_given_organizations_and_returns_at_once(bench_dags):
    from airflow.utils.session import create_session

    dag_run = bench_dags[CONTROL_DAG_ID].test(run_conf=control_conf([3, 5, 8]))

    assert dag_run.state == "success"
    with create_session() as session:
        mapped = {
            ti.map_index: (ti.state, ti.rendered_map_index)
            for ti in dag_run.get_task_instances(session=session)
            if ti.task_id == BILL_ORGANIZATION_TASK
        }
        [record] = [ti for ti in dag_run.get_task_instances(session=session) if ti.task_id == RECORD_RUNS_TASK]
        results = record.xcom_pull(task_ids=RECORD_RUNS_TASK, session=session)
    assert mapped == {
        0: ("success", "organization (#3)"),
        1: ("success", "organization (#5)"),
        2: ("success", "organization (#8)"),
    }
    assert results == [{"organization_id": 3}, {"organization_id": 5}, {"organization_id": 8}]


def test_the_controls_conf_holds_ranges_of_ids_not_the_ids():
    """The scheduler decodes a run's conf with each of its task instances on every loop: a conf of
    10,000 ids made the control measure that instead of Airflow's floor."""
    ids = [*range(1, 10_001), 10_005, 10_007, 10_008]
    assert id_ranges(ids) == [[1, 10_000], [10_005, 10_005], [10_007, 10_008]]
    assert ids_of_ranges(id_ranges(ids)) == ids
    assert ids_of_ranges(id_ranges([8, 3, 4])) == [8, 3, 4]
    assert id_ranges([]) == []


# Figures of a rent run and its control as summarize() reports them (2,000 organizations).
RECORDED = {
    "rent_wall_s": 403.0,
    "rent_overhead_per_task_s": 0.155,
    "rent_cpu_per_task_s": {"api-server": 0.1, "scheduler": 0.06, "supervisors": 0.05, "tasks": 0.12, "postgres": 0.06},
    "control_wall_s": 310.0,
    "control_overhead_per_task_s": 0.124,
    "control_cpu_per_task_s": {
        "api-server": 0.08,
        "scheduler": 0.05,
        "supervisors": 0.04,
        "tasks": 0.06,
        "postgres": 0.0,
    },
}


@pytest.mark.unit
def test_billing_is_compared_with_the_control_figure_by_figure():
    ratios = bench_pipeline.versus_control(RECORDED, "rent")
    assert ratios == {
        "rent_vs_control_wall_s": 1.3,
        "rent_vs_control_overhead_per_task_s": 1.25,
        # Every component; one the control did not load at all has no ratio.
        "rent_vs_control_cpu_per_task": {
            "api-server": 1.25, "postgres": None, "scheduler": 1.2, "supervisors": 1.25, "tasks": 2.0,
        },
    }  # fmt: skip


@pytest.mark.unit
def test_the_control_table_shows_both_sides_and_the_ratio():
    table = bench_pipeline.control_table(RECORDED, "rent").splitlines()
    assert table[0].split() == ["rent", "control", "ratio"]
    assert table[1].split() == ["wall", "s", "403.0", "310.0", "1.30×"]
    assert table[2].split() == ["overhead/task", "s", "0.155", "0.124", "1.25×"]
    assert table[3].split() == ["CPU-s/task", "api-server", "0.100", "0.080", "1.25×"]
    assert table[4].split() == ["CPU-s/task", "postgres", "0.060", "0.000", "-"]
    assert [row.split()[1] for row in table[3:]] == ["api-server", "postgres", "scheduler", "supervisors", "tasks"]


@pytest.mark.unit
def test_the_sweep_table_and_chart_show_the_control_beside_rent(tmp_path):
    """Points measured before the control existed (a resumed sweep) are shown without it."""
    old = {"executor": "local", "organizations": 500, "rent_wall_s": 80.0, "rent_overhead_per_task_s": 0.16}
    new = {"executor": "local", "organizations": 2000, **RECORDED}
    lines = bench_sweep.table([old, new]).splitlines()
    assert lines[0].split()[-6:] == ["control", "wall", "s", "control/task", "s", "vs", "control"][-6:]
    assert lines[1].split()[-3:] == ["-", "-", "-"]
    assert lines[2].split()[-3:] == ["310.0", "0.124", "1.25×"]
    bench_sweep.chart([old, new], tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").stat().st_size > 0
