"""`make bench-scale BENCH_ARGS="--floor-settings …"` on live Airflow, at the smallest size: two
stacks, one frozen while the other runs the control DAG, and the pair's figures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.live


def test_a_floor_setting_is_measured_as_pairs_of_control_runs(tmp_path):
    done = subprocess.run(
        [
            sys.executable, "-m", "tentman_dev.bench.scale", "--floor-settings", "idle-sleep-1",
            "--floor-organizations", "3", "--pairs", "1", "--out", str(tmp_path),
        ],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "idle-sleep-1, pair 1/1: baseline " in done.stdout
    figures = json.loads((tmp_path / "floor-settings.json").read_text())
    assert (figures["organizations"], figures["concurrency"]) == (3, 16)
    result = figures["candidates"]["idle-sleep-1"]
    assert result["settings"] == {"AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "1"}
    [pair] = result["pairs"]
    for side in ("baseline", "candidate"):
        # Each side's control run mapped the three organizations and succeeded on its own stack.
        assert pair[side]["control_state"] == "success" and pair[side]["control_mapped_tasks"] == 3
        assert pair[side]["control_cpu_per_task_s"]["scheduler"] > 0
    assert result["ratios"]["wall"]["median"] == pytest.approx(pair["ratios"]["wall"], abs=0.005)
    assert pair["ratios"]["wall"] > 0
