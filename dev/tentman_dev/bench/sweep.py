"""`make bench-scale BENCH_ARGS="--sweep 500,2000"`: Airflow's overhead per mapped task as the number
of organizations grows (not a test).

For each N: N small organizations (`--leases-per-organization`, default 5), a fresh TentMan and
metadata database, a fresh live Airflow on the chosen executor(s), one rent run, then one run of
the control DAG over the same organizations (tentman_dev.bench.control: Airflow's floor). Overhead
per mapped task = (run wall time − Σ engine seconds / concurrency) / N: what Airflow costs around
the billing (the control bills nothing: its wall time / N). Prints a table, writes the figures as
JSON and the curves (rent and control) as a PNG next to them.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from tentman.names import RENT_DAG_ID
from tentman_dev.bench.pipeline import (
    MONTH,
    ProcessSampler,
    control_table,
    embedded_tentman,
    measured_control_run,
    measured_run,
    measured_stack,
    populate_organizations,
    postmaster_pid,
    summarize,
    versus_control,
)


def measure(n: int, leases: int, *, executor: str, workers: int, concurrency: int, timeout: float) -> dict:
    with (
        tempfile.TemporaryDirectory(prefix="tentman-bench-sweep-") as scratch_name,
        embedded_tentman(Path(scratch_name)) as (admin, tentman_uri, engine),
    ):
        scratch = Path(scratch_name)
        with engine.begin() as conn:
            populate_organizations(conn, [leases] * n, statements=max(1, n * leases))
        with measured_stack(
            scratch, admin, tentman_uri, executor=executor, workers=workers, concurrency=concurrency, n=n
        ) as (
            stack,
            api,
        ):
            roots = {name: proc.pid for name, proc in stack.processes.items()}
            roots["postgres"] = postmaster_pid(scratch / "pgdata")
            sampler = ProcessSampler(roots)
            sampler.start()
            started = time.perf_counter()
            outcome, cpu = measured_run(api, sampler, RENT_DAG_ID, {"billing_month": MONTH}, timeout)
            figures = summarize("rent", engine, outcome, "leases", n * leases, concurrency, cpu)
            figures["observed_s"] = round(time.perf_counter() - started, 1)
            # Airflow's floor: the control DAG over the same organizations, right after.
            control, cpu = measured_control_run(api, sampler, outcome, timeout)
            sampler.stop.set()
            figures.update(summarize("control", engine, control, "organizations", n, concurrency, cpu))
            figures.update(versus_control(figures, "rent"))
            print(control_table(figures, "rent"), flush=True)
    return {
        "organizations": n,
        "leases_per_organization": leases,
        "executor": executor,
        "concurrency": concurrency,
        **({"workers": workers} if executor == "celery" else {}),
        **figures,
    }


def resumable(path: Path, *, leases: int, concurrency: int) -> list[dict]:
    """The points of an earlier sweep measured with these settings."""
    if not path.exists():
        return []
    return [
        r
        for r in json.loads(path.read_text())
        if r.get("leases_per_organization") == leases and r.get("concurrency") == concurrency
    ]


def chart(results: list[dict], path: Path) -> None:
    """The overhead per mapped task against N: per executor, rent's line and the control's (dashed,
    same colour; points measured before the control ran have none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    for executor in sorted({r["executor"] for r in results}):
        of_executor = [r for r in results if r["executor"] == executor]
        points = sorted((r["organizations"], r["rent_overhead_per_task_s"]) for r in of_executor)
        [line] = axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{executor}: rent")
        control = sorted(
            (r["organizations"], r["control_overhead_per_task_s"])
            for r in of_executor
            if "control_overhead_per_task_s" in r
        )
        if control:
            axes.plot(
                [p[0] for p in control], [p[1] for p in control], marker="s", linestyle="--",
                color=line.get_color(), label=f"{executor}: control (empty tasks)",
            )  # fmt: skip
    axes.set_xlabel("organizations (one mapped task each)")
    axes.set_ylabel("Airflow overhead per mapped task (s)")
    axes.set_title("Rent run against the control: Airflow's cost per organization task")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def table(results: list[dict]) -> str:
    """One row per run, by size: the overhead per task against the same executor's smallest size,
    and against LocalExecutor at the same size."""
    lines = [
        f"{'executor':<8} {'orgs':>6} {'wall s':>8} {'overhead/task s':>16} {'vs smallest':>12} {'vs local':>9} "
        f"{'control wall s':>15} {'control/task s':>15} {'vs control':>11}",
    ]
    ordered = sorted(results, key=lambda r: (r["organizations"], r["executor"] != "local", r["executor"]))
    smallest: dict[str, float] = {}
    local = {r["organizations"]: r["rent_overhead_per_task_s"] for r in ordered if r["executor"] == "local"}
    for r in ordered:
        overhead = r["rent_overhead_per_task_s"]
        base = smallest.setdefault(r["executor"], overhead)
        vs_smallest = f"{overhead / base:.2f}×" if base else "-"
        vs_local = f"{overhead / local[r['organizations']]:.2f}×" if local.get(r["organizations"]) else "-"
        control = r.get("control_overhead_per_task_s")
        lines.append(
            f"{r['executor']:<8} {r['organizations']:>6,} {r['rent_wall_s']:>8.1f} "
            f"{overhead:>16.3f} {vs_smallest:>12} {vs_local:>9} "
            f"{'-' if control is None else format(r['control_wall_s'], '.1f'):>15} "
            f"{'-' if control is None else format(control, '.3f'):>15} "
            f"{f'{overhead / control:.2f}×' if control else '-':>11}"
        )
    return "\n".join(lines)


def run_sweep(
    plan: list[tuple[int, str]],
    *,
    leases: int,
    workers: int,
    concurrency: int,
    timeout: float | None,
    out_dir: Path,
    resume: bool = False,
) -> list[dict]:
    """Measure each (organizations, executor) of the plan; with `resume`, keep the points already in
    the output's sweep.json measured with the same settings and measure only the others (a sweep
    of hours can be stopped, and continued)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = resumable(out_dir / "sweep.json", leases=leases, concurrency=concurrency) if resume else []
    done = {(r["organizations"], r["executor"]) for r in results}
    for n, executor in plan:
        if (n, executor) in done:
            print(f"{executor} at {n:,} organizations: kept from {out_dir / 'sweep.json'}", flush=True)
            continue
        # 10,000 organizations took 66 min here: a fixed hour would cut the largest runs short.
        run_timeout = timeout or max(3600.0, 1.0 * n)
        figures = measure(n, leases, executor=executor, workers=workers, concurrency=concurrency, timeout=run_timeout)
        results.append(figures)
        print(json.dumps(figures), flush=True)
        (out_dir / "sweep.json").write_text(json.dumps(results, indent=2))
    chart(results, out_dir / "sweep.png")
    print(table(results))
    print(f"figures: {out_dir / 'sweep.json'}; chart: {out_dir / 'sweep.png'}")
    return results
