"""`make bench-scale BENCH_ARGS="--floor-settings all"`: Airflow settings that might lower its own
cost per mapped task, each measured pairwise on the control DAG (not a test).

Airflow's floor is what the control DAG's organization task costs (tentman_dev.bench.control: the
rent DAG with bodies that do nothing). For each candidate setting (FLOOR_CANDIDATES), two live
stacks on one embedded PostgreSQL, on fresh metadata databases — the benchmark's settings (the
baseline) and the same with the candidate — run the control DAG over the same organizations as
alternating pairs (baseline then candidate, candidate then baseline, …). The candidate `same` is
the baseline's settings on a second stack: its ratios are the benchmark's own noise. The stack not
running is frozen (SIGSTOP on its process groups, SIGCONT before its run), so that its loops take no
CPU from the measured one. Both stacks are started afresh for each candidate, so that both have run
as many runs: a metadata database that holds more runs makes every run slower (a baseline kept for
the whole benchmark was 7% slower than a fresh stack of the same settings by the time it had run
eighteen times).

Prints every run, and per candidate the medians of the ratios candidate ÷ baseline over its pairs:
wall time, and CPU-s per task of each component and of all of them. Below 1, the candidate is
cheaper. The figures go to floor-settings.json in `--out`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

from tentman_dev.bench.control import CONTROL_DAG_ID, control_conf
from tentman_dev.bench.pipeline import (
    ProcessSampler,
    embedded_tentman,
    measured_run,
    measured_stack,
    postmaster_pid,
    ratio,
    summarize,
)

# Seconds a thawed stack is given before its run: its loops catch up on the time they were frozen
# (heartbeats, the dag-processor's refresh), which is not the run's cost.
THAW_SETTLE_S = 5.0


@dataclasses.dataclass(frozen=True)
class FloorCandidate:
    """A setting tried below the floor: what it changes on top of the benchmark's settings, and
    what a deployment gives up for it."""

    settings: dict[str, str]
    trade_off: str
    # Organizations billed at once (the pool, the run's and the executor's limits), when the
    # candidate changes it; the baseline's otherwise.
    concurrency: int | None = None


FLOOR_CANDIDATES: dict[str, FloorCandidate] = {
    # The baseline's own settings on a second stack: how far apart two stacks of the same settings
    # are, the noise any other candidate's ratio must stand out of.
    "same": FloorCandidate({}, "none: the baseline's settings (the benchmark's noise, measured)"),
    "no-preload": FloorCandidate(
        # config/airflow_local_settings.py off the stack's PYTHONPATH: the setting we run with, measured
        # by taking it away.
        {"PYTHONPATH": os.environ.get("PYTHONPATH", "")},
        "none: preloading costs the scheduler (or each Celery worker) the billing modules' memory once",
    ),
    "logging-warning": FloorCandidate(
        {"AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING"},
        "task logs keep warnings and errors only: an organization's log no longer says what it billed",
    ),
    # tentman.deployment.SCHEDULING (0.2 s), measured by taking it away: Airflow's default.
    "idle-sleep-1": FloorCandidate(
        {"AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "1"},
        "none: 0.2 s makes an idle scheduler loop five times as often (its CPU and metadata queries)",
    ),
    "api-workers-2": FloorCandidate(
        {"AIRFLOW__API__WORKERS": "2"},
        "a second api-server process: its memory, and one more pool of metadata connections",
    ),
    "concurrency-32": FloorCandidate(
        {}, "twice the task processes and TentMan database connections at once", concurrency=32
    ),
    "concurrency-8": FloorCandidate({}, "half the organizations in flight", concurrency=8),
}


def candidate_names(text: str) -> list[str]:
    """`--floor-settings`: `all`, or names of FLOOR_CANDIDATES separated by commas; a ValueError
    names an unknown one and lists the accepted names."""
    if text.strip() == "all":
        return list(FLOOR_CANDIDATES)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in FLOOR_CANDIDATES]
    if unknown or not names:
        raise ValueError(
            f"unknown floor setting(s) {', '.join(unknown) or repr(text)}; "
            f"expected `all` or some of: {', '.join(FLOOR_CANDIDATES)}"
        )
    return names


@dataclasses.dataclass(eq=False)  # compared (and hashed) by identity: one per stack
class FrozenWhenIdle:
    """A live benchmark stack whose processes are stopped (SIGSTOP) between its runs."""

    stack: object
    api: object
    sampler: ProcessSampler

    def _signal(self, sig: int) -> None:
        for process in self.stack.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)  # each component is the leader of its own process group

    def freeze(self) -> None:
        self._signal(signal.SIGSTOP)

    def thaw(self, settle: bool = True) -> None:
        self._signal(signal.SIGCONT)
        if settle:
            time.sleep(THAW_SETTLE_S)

    def control_run(self, engine, organization_ids: list[int], timeout: float) -> dict:
        """The control DAG over `organization_ids`, thawed for it and frozen after: summarize's figures."""
        self.thaw()
        try:
            outcome, cpu = measured_run(self.api, self.sampler, CONTROL_DAG_ID, control_conf(organization_ids), timeout)
        finally:
            self.freeze()
        if outcome["run"]["state"] != "success":
            raise RuntimeError(f"the control run {outcome['run']['dag_run_id']} ended {outcome['run']['state']}")
        return summarize("control", engine, outcome, "organizations", len(organization_ids), 1, cpu)


def cpu_total(figures: dict) -> float:
    """CPU-s per task of every component, PostgreSQL included."""
    return sum(figures["control_cpu_per_task_s"].values())


def pair_ratios(baseline: dict, candidate: dict) -> dict:
    """Candidate ÷ baseline of one pair: wall time, CPU-s per task in all and by component."""
    base_cpu, candidate_cpu = baseline["control_cpu_per_task_s"], candidate["control_cpu_per_task_s"]
    return {
        "wall": ratio(candidate["control_wall_s"], baseline["control_wall_s"]),
        "cpu_per_task": ratio(cpu_total(candidate), cpu_total(baseline)),
        **{
            f"cpu_{component}": ratio(candidate_cpu.get(component, 0.0), base_cpu.get(component))
            for component in sorted({*base_cpu, *candidate_cpu})
        },
    }


def medians(pairs: list[dict]) -> dict:
    """Each ratio's median over the pairs, with its min and max."""
    keys = [key for key in pairs[0] if all(pair.get(key) is not None for pair in pairs)]
    return {
        key: {
            "median": round(statistics.median(p[key] for p in pairs), 2),
            "min": round(min(p[key] for p in pairs), 2),
            "max": round(max(p[key] for p in pairs), 2),
        }
        for key in keys
    }


def ratio_cell(ratios: dict, key: str) -> str:
    """`0.93x (0.88-0.97)`: a ratio's median and its min–max, as the verdict prints it."""
    r = ratios.get(key)
    return "-" if r is None else f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"


def verdict_table(results: dict[str, dict]) -> str:
    """One row per candidate: the median ratios (min–max) of wall time and CPU-s per task."""
    lines = [f"{'candidate':<16} {'wall':>18} {'CPU-s/task':>18}  per component (median)"]
    for name, result in results.items():
        ratios = result["ratios"]
        components = ", ".join(
            f"{key.removeprefix('cpu_')} {value['median']:.2f}x"
            for key, value in ratios.items()
            if key.startswith("cpu_") and key != "cpu_per_task"
        )
        lines.append(
            f"{name:<16} {ratio_cell(ratios, 'wall'):>18} {ratio_cell(ratios, 'cpu_per_task'):>18}  {components}"
        )
    return "\n".join(lines)


@contextlib.contextmanager
def frozen_stack(scratch: Path, admin: str, tentman_uri: str, label: str, *, organizations: int, concurrency: int,
                 settings: dict[str, str]):  # fmt: skip
    """A benchmark stack of `settings` on embedded_tentman's server in `scratch`, frozen until its
    first run; thawed again before it is stopped (a frozen process group would wait out the stop's
    timeout)."""
    (scratch / label).mkdir()
    with measured_stack(
        scratch / label, admin, tentman_uri, concurrency=concurrency, n=organizations, extra_settings=settings
    ) as (stack, api):
        roots = {name: proc.pid for name, proc in stack.processes.items()}
        roots["postgres"] = postmaster_pid(scratch / "pgdata")
        frozen = FrozenWhenIdle(stack, api, ProcessSampler(roots))
        frozen.freeze()
        try:
            yield frozen
        finally:
            frozen.thaw(settle=False)


def measured_pairs(
    name: str, baseline: FrozenWhenIdle, tried: FrozenWhenIdle, engine, organization_ids: list[int], pairs: int,
    timeout: float,
) -> list[dict]:  # fmt: skip
    """`pairs` pairs of control runs, one on each stack: each side's figures and the pair's ratios."""
    runs = []
    for pair in range(1, pairs + 1):
        # Which stack runs first alternates pair by pair: a run right after a thaw, or after the
        # other stack's run, is not favoured on one side only.
        order = (baseline, tried) if pair % 2 else (tried, baseline)
        figures = {side: side.control_run(engine, organization_ids, timeout) for side in order}
        base, other = figures[baseline], figures[tried]
        runs.append({"baseline": base, "candidate": other, "ratios": pair_ratios(base, other)})
        print(
            f"{name}, pair {pair}/{pairs}: baseline {base['control_wall_s']:.1f}s "
            f"({cpu_total(base):.3f} CPU-s/task), {name} {other['control_wall_s']:.1f}s "
            f"({cpu_total(other):.3f} CPU-s/task): wall {runs[-1]['ratios']['wall']:.2f}x, "
            f"CPU {runs[-1]['ratios']['cpu_per_task']:.2f}x",
            flush=True,
        )
    return runs


def run_floor_settings(
    names: list[str], *, organizations: int, concurrency: int, pairs: int, timeout: float, out_dir: Path
) -> dict[str, dict]:
    """Measure each candidate of `names` against the baseline, `pairs` alternating pairs each."""
    out_dir.mkdir(parents=True, exist_ok=True)
    organization_ids = list(range(1, organizations + 1))
    results: dict[str, dict] = {}
    with (
        tempfile.TemporaryDirectory(prefix="tentman-bench-floor-") as scratch_name,
        embedded_tentman(Path(scratch_name)) as (admin, tentman_uri, engine),
    ):
        server = (Path(scratch_name), admin, tentman_uri)
        for name in names:
            candidate = FLOOR_CANDIDATES[name]
            with (
                frozen_stack(
                    *server, f"baseline-for-{name}", organizations=organizations, concurrency=concurrency, settings={}
                ) as baseline,
                frozen_stack(
                    *server,
                    name,
                    organizations=organizations,
                    concurrency=candidate.concurrency or concurrency,
                    settings=candidate.settings,
                ) as tried,
            ):
                runs = measured_pairs(name, baseline, tried, engine, organization_ids, pairs, timeout)
            results[name] = {
                "settings": candidate.settings,
                "concurrency": candidate.concurrency or concurrency,
                "trade_off": candidate.trade_off,
                "ratios": medians([run["ratios"] for run in runs]),
                "pairs": runs,
            }
            (out_dir / "floor-settings.json").write_text(
                json.dumps(
                    {"organizations": organizations, "concurrency": concurrency, "candidates": results}, indent=2
                )
            )
            print(verdict_table({name: results[name]}), flush=True)
    print(verdict_table(results))
    print(f"figures: {out_dir / 'floor-settings.json'}")
    return results
