"""`make bench-scale BENCH_ARGS="--floor-settings …"` (tentman_dev.bench.floor): Airflow settings
measured pairwise on the control DAG, the stack not running frozen."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tentman_dev.bench import floor

pytestmark = pytest.mark.unit


def test_the_candidates_are_named_on_the_command_line():
    assert floor.candidate_names("all") == list(floor.FLOOR_CANDIDATES)
    assert floor.candidate_names("all")[0] == "same" and floor.FLOOR_CANDIDATES["same"].settings == {}
    assert floor.candidate_names("concurrency-8, logging-warning") == ["concurrency-8", "logging-warning"]


@pytest.mark.parametrize("text", ["concurrency-9", "logging-warning,fast", ""])
def test_an_unknown_candidate_is_refused_with_the_accepted_names(text):
    with pytest.raises(ValueError) as refused:
        floor.candidate_names(text)
    message = str(refused.value)
    assert "unknown floor setting(s)" in message and "expected `all` or some of: same, no-preload" in message
    assert (text.split(",")[-1] or repr(text)) in message


def test_every_candidate_sets_an_option_airflow_has():
    """A misspelt AIRFLOW__SECTION__KEY would be ignored by Airflow, and the pair measure nothing.
    Read from Airflow's own option list (its config template), without importing Airflow: the
    session's in-process Airflow is configured by the first test that needs it."""
    import importlib.util

    import yaml

    [package] = importlib.util.find_spec("airflow").submodule_search_locations
    options = yaml.safe_load((Path(package) / "config_templates" / "config.yml").read_text())
    for name, candidate in floor.FLOOR_CANDIDATES.items():
        for variable in candidate.settings:
            if variable.startswith("AIRFLOW__"):
                section, key = variable.removeprefix("AIRFLOW__").lower().split("__")
                assert key in options.get(section, {}).get("options", {}), (name, variable)
        assert candidate.settings or candidate.concurrency or name == "same", name
        assert candidate.trade_off, name


def _run(wall: float, **cpu: float) -> dict:
    return {"control_wall_s": wall, "control_cpu_per_task_s": cpu}


def test_a_pair_is_the_candidate_over_the_baseline_and_the_verdict_their_medians():
    pairs = [
        floor.pair_ratios(_run(100.0, scheduler=0.05, tasks=0.15), _run(90.0, scheduler=0.04, tasks=0.12)),
        floor.pair_ratios(_run(110.0, scheduler=0.05, tasks=0.15), _run(88.0, scheduler=0.05, tasks=0.10)),
        floor.pair_ratios(_run(100.0, scheduler=0.04, tasks=0.16), _run(95.0, scheduler=0.06, tasks=0.10)),
    ]
    assert pairs[0] == {"wall": 0.9, "cpu_per_task": 0.8, "cpu_scheduler": 0.8, "cpu_tasks": 0.8}
    ratios = floor.medians(pairs)
    assert ratios["wall"] == {"median": 0.9, "min": 0.8, "max": 0.95}
    assert ratios["cpu_scheduler"] == {"median": 1.0, "min": 0.8, "max": 1.5}
    row = floor.verdict_table({"concurrency-8": {"ratios": ratios}}).splitlines()[1]
    assert row.split()[:5] == ["concurrency-8", "0.90x", "(0.80-0.95)", "0.80x", "(0.75-0.80)"]
    assert "scheduler 1.00x, tasks 0.67x" in row


def test_a_frozen_stack_takes_no_cpu_until_it_is_thawed(monkeypatch):
    """Each component leads a process group of its own (AirflowStack.start); freezing stops the
    group, its children included, and thawing lets it run on."""
    monkeypatch.setattr(floor, "THAW_SETTLE_S", 0.0)
    busy = "import os, time\nos.fork()\nwhile True: pass"
    component = subprocess.Popen([sys.executable, "-c", busy], start_new_session=True)
    try:
        time.sleep(0.5)
        group = [psutil.Process(component.pid), *psutil.Process(component.pid).children()]
        assert len(group) == 2

        class Stack:
            processes = {"scheduler": component}

        frozen = floor.FrozenWhenIdle(Stack(), api=None, sampler=None)
        frozen.freeze()
        time.sleep(0.2)
        assert [p.status() for p in group] == [psutil.STATUS_STOPPED] * 2
        cpu = [sum(p.cpu_times()[:2]) for p in group]
        time.sleep(0.5)
        assert [sum(p.cpu_times()[:2]) for p in group] == cpu
        frozen.thaw()
        time.sleep(0.5)
        assert all(p.status() != psutil.STATUS_STOPPED for p in group)
        assert sum(sum(p.cpu_times()[:2]) for p in group) > sum(cpu)
    finally:
        for p in psutil.Process(component.pid).children():
            p.send_signal(signal.SIGKILL)
        component.kill()
        component.wait()
