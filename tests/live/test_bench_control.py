"""`make bench-scale` at its smallest on live Airflow: the rent run, then the control DAG over the
same organizations on the same stack, reported side by side (tentman_dev.bench.control)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tentman_dev.bench.pipeline import CONTROL_FIGURES

pytestmark = [pytest.mark.live, pytest.mark.slow]

COMPONENTS = {"api-server", "scheduler", "dag-processor", "supervisors", "tasks", "postgres"}


def test_a_sweep_point_reports_rent_beside_the_control(tmp_path):
    """`make bench-scale BENCH_ARGS="--sweep 3 --leases-per-organization 2"`: one point (its own
    embedded PostgreSQL and Airflow, in a process of its own as `make` runs it)."""
    command = [sys.executable, "-m", "tentman_dev.bench.scale", "--sweep", "3", "--leases-per-organization", "2"]
    done = subprocess.run([*command, "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-5000:]

    [point] = json.loads((tmp_path / "sweep.json").read_text())
    assert (point["rent_state"], point["control_state"]) == ("success", "success")
    assert (point["rent_mapped_tasks"], point["control_mapped_tasks"]) == (3, 3)
    assert point["control_engine_s"] == 0  # the control bills nothing
    for figure in CONTROL_FIGURES:
        assert point[f"rent_{figure}"] > 0 and point[f"control_{figure}"] > 0
        assert point[f"rent_vs_control_{figure}"] > 0
    # CPU-s per task of every component, both sides, and their ratios.
    assert set(point["rent_cpu_per_task_s"]) >= COMPONENTS and set(point["control_cpu_per_task_s"]) >= COMPONENTS
    assert set(point["rent_vs_control_cpu_per_task"]) == set(point["rent_cpu_per_task_s"]) | set(
        point["control_cpu_per_task_s"]
    )
    assert point["rent_vs_control_cpu_per_task"]["scheduler"] > 0
    assert "CPU-s/task scheduler" in done.stdout and "control/task s" in done.stdout
    assert (tmp_path / "sweep.png").stat().st_size > 0
