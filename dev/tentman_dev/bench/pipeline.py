"""What the live-pipeline benchmarks share (`make bench-scale`, its sweep): the population of
organizations and its data, a measured Airflow stack, a DAG run timed with the processes sampled,
and the summary of a run."""

from __future__ import annotations

import contextlib
import random
import statistics
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa

from tentman.billing.leases import LeaseStatus
from tentman.billing.periods import BillingPeriod
from tentman.db import create_engine_from_uri
from tentman.migrate import upgrade
from tentman.names import BILL_ORGANIZATION_TASK, DAG_IDS, LIST_ORGANIZATIONS_TASK, RECONCILE_TASK, StatementStatus
from tentman_dev.airflow_stack import (
    MAX_MAP_LENGTH,
    AirflowApi,
    AirflowStack,
    free_port,
    isolated_environment,
    write_passwords,
)
from tentman_dev.bench.control import CONTROL_DAG_ID, benchmark_dags_folder, control_conf
from tentman_dev.broker import EmbeddedBroker
from tentman_dev.local import (
    airflow_metadata_uri,
    ensure_database,
    server_uri,
    start_embedded_postgres,
    with_database,
)

MONTH_PERIOD = BillingPeriod.for_month(2026, 3)
MONTH = MONTH_PERIOD.label
NEXT_PERIOD = MONTH_PERIOD.next()


def organization_sizes(organizations: int, leases: int, seed: int = 7) -> list[int]:
    """A few very large organizations, most with tens to hundreds of leases; sums to `leases`."""
    rng = random.Random(seed)
    big = [int(leases * share) for share in (0.06, 0.055, 0.05)]  # 60k, 55k, 50k at 1M
    mid = [int(leases * 0.004)] * min(20, max(0, organizations // 100))
    rest = organizations - len(big) - len(mid)
    remaining = leases - sum(big) - sum(mid)
    weights = [rng.lognormvariate(0, 1.0) for _ in range(rest)]
    scale = remaining / sum(weights)
    small = [max(1, int(w * scale)) for w in weights]
    small[0] += leases - sum(big) - sum(mid) - sum(small)
    return big + mid + small


def populate_organizations(conn, sizes: list[int], statements: int) -> None:
    """Organizations of the given sizes (leases each), a parking charge on every third lease and
    `statements` finalized water statements spread over the leases."""
    conn.execute(
        sa.text(
            "INSERT INTO organizations (id, name) SELECT g, 'Organization ' || g FROM generate_series(1, :count) g"
        ),
        {"count": len(sizes)},
    )
    conn.execute(sa.text("CREATE TEMP TABLE sizes (org int, n int)"))
    conn.execute(
        sa.text(
            "INSERT INTO sizes SELECT * FROM unnest(CAST(:organization_ids AS int[]), CAST(:lease_counts AS int[]))"
        ),
        {"organization_ids": list(range(1, len(sizes) + 1)), "lease_counts": sizes},
    )
    conn.execute(
        sa.text(
            """
        INSERT INTO leases (organization_id, unit_label, tenant_name, start_date, end_date, monthly_rent, status)
        SELECT s.org, 'U' || g, 'Tenant ' || g,
               CASE WHEN g % 20 = 0 THEN DATE '2026-03-01' + (g % 27) ELSE DATE '2025-01-01' END,
               CASE WHEN g % 20 = 10 THEN DATE '2026-03-02' + (g % 27) END,
               700 + (g % 2500) + (g % 100) / 100.0, :active
        FROM sizes s, generate_series(1, s.n) g
        """
        ),
        {"active": LeaseStatus.ACTIVE},
    )
    conn.execute(
        sa.text(
            """INSERT INTO lease_recurring_charges (lease_id, charge_type, description, amount, start_date)
           SELECT id, 'parking', 'Parking space', 45.50, DATE '2025-01-01' FROM leases WHERE id % 3 = 0"""
        )
    )
    conn.execute(
        sa.text(
            """INSERT INTO utility_statements (organization_id, lease_id, utility_type, period_start, period_end,
                                              amount, status)
           SELECT organization_id, id, 'water', DATE '2026-02-01', DATE '2026-02-28',
                  10 + (id % 9000) / 100.0, :finalized
           FROM leases WHERE id % :every = 0"""
        ),
        {"every": max(1, sum(sizes) // statements), "finalized": StatementStatus.FINALIZED},
    )


@contextlib.contextmanager
def embedded_tentman(scratch: Path):
    """An embedded PostgreSQL in `scratch` with a freshly migrated TentMan database (the
    application's tables included): its admin URI, the TentMan URI and an engine on it; the server
    is stopped afterwards (its `postmaster_pid(scratch / "pgdata")` is PostgreSQL's root process)."""
    server = start_embedded_postgres(scratch / "pgdata", cleanup_mode="stop")
    try:
        admin = server_uri(server)
        tentman_db = f"tentman_{uuid.uuid4().hex[:6]}"
        ensure_database(admin, tentman_db)
        tentman_uri = with_database(admin, tentman_db)
        engine = create_engine_from_uri(tentman_uri)
        try:
            upgrade(engine, with_application_tables=True)
            yield admin, tentman_uri, engine
        finally:
            engine.dispose()
    finally:
        server.cleanup()


class ProcessSampler(threading.Thread):
    """Samples the stack's processes: peak RSS of the scheduler process, and CPU seconds by
    component. Task processes are forked by the executor's worker processes (the supervisors),
    which reap them, so a finished task's CPU shows in its supervisor's children_* times."""

    def __init__(self, roots: dict[str, int]):
        super().__init__(daemon=True)
        self.roots, self.peak_mb, self.stop = roots, 0.0, threading.Event()

    def cpu_by_component(self) -> dict[str, float]:
        import psutil

        def seconds(proc, own=True, reaped=True) -> float:
            t = proc.cpu_times()
            return (t.user + t.system if own else 0.0) + (t.children_user + t.children_system if reaped else 0.0)

        cpu: dict[tuple[str, int], float] = {}
        for name, pid in self.roots.items():
            if pid is None:
                continue
            try:
                root = psutil.Process(pid)
                if name == "scheduler":
                    cpu[("scheduler", pid)] = seconds(root, reaped=False)
                    for worker in root.children():
                        cpu[("supervisors", worker.pid)] = seconds(worker, reaped=False)
                        cpu[("tasks", worker.pid)] = seconds(worker, own=False)
                        for task in worker.children(recursive=True):
                            cpu[("tasks", task.pid)] = seconds(task)
                else:
                    cpu[(name, pid)] = seconds(root)
                    for child in root.children(recursive=True):
                        cpu[(name, child.pid)] = seconds(child)
            except psutil.Error:
                continue
        totals: dict[str, float] = {}
        for (name, _), value in cpu.items():
            totals[name] = totals.get(name, 0.0) + value
        return totals

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            try:
                rss = psutil.Process(self.roots["scheduler"]).memory_info().rss
                self.peak_mb = max(self.peak_mb, rss / 2**20)
            except psutil.Error:
                pass
            time.sleep(0.5)


def run_dag(api, dag_id: str, conf: dict, timeout: float) -> dict:
    """Trigger a run and wait for its end; the run as the API returns it."""
    response = api.trigger(dag_id, conf)
    response.raise_for_status()
    run_id = response.json()["dag_run_id"]
    # Poll the run's last task, not the run: the run's own endpoint lists the DAG versions of every
    # task instance, 2.5 s of api-server CPU per request at 10,000 organizations (0.02 s for one
    # task instance), which would be measured as Airflow's overhead. The figures come from the run's
    # own start and end dates, not from when we noticed.
    deadline = time.monotonic() + timeout
    last_task = f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{RECONCILE_TASK}"
    while time.monotonic() < deadline:
        response = api.client.get(last_task)
        if response.status_code == 200 and response.json()["state"] in ("success", "failed", "upstream_failed"):
            break
        time.sleep(5)
    return api.wait(dag_id, run_id, timeout=max(60.0, deadline - time.monotonic()), poll=2)


def measured_run(api, sampler: ProcessSampler, dag_id: str, conf: dict, timeout: float) -> tuple[dict, dict]:
    """Run a DAG to its end: the run, its task instances, and the CPU seconds each component spent
    until the run ended (listing the task instances afterwards is not counted)."""
    before = sampler.cpu_by_component()
    run = run_dag(api, dag_id, conf, timeout)
    after = sampler.cpu_by_component()
    outcome = {"run": run, "task_instances": list(api.task_instances(dag_id, run["dag_run_id"]).values())}
    return outcome, {name: after.get(name, 0.0) - before.get(name, 0.0) for name in after}


def ui_timings(api, base_url: str, dag_id: str, run_id: str) -> dict[str, float]:
    """Milliseconds of what the UI asks for when someone opens a 2,000-organization run: the grid
    (runs, structure, task-instance summaries), a page of mapped instances, and the Billing runs page."""
    import httpx

    headers = dict(api.client.headers)
    run_path = quote(run_id, safe="")  # run ids hold '+' and ':'
    requests = {
        "grid_runs": (f"/ui/grid/runs/{dag_id}", {"limit": 10}),
        "grid_structure": (f"/ui/grid/structure/{dag_id}", {}),
        "grid_ti_summaries": (f"/ui/grid/ti_summaries/{dag_id}", {"run_ids": run_id}),
        "mapped_instances_page": (
            f"/api/v2/dags/{dag_id}/dagRuns/{run_path}/taskInstances",
            {"task_id": BILL_ORGANIZATION_TASK, "limit": 50},
        ),
        "billing_runs_page": ("/tentman/api/runs", {"billing_month": MONTH, "limit": 50}),
        "billing_runs_with_errors": ("/tentman/api/runs", {"billing_month": MONTH, "status": "completed_with_errors"}),
    }
    timings, sizes = {}, {}
    with httpx.Client(base_url=base_url, headers=headers, timeout=120) as client:
        for name, (path, params) in requests.items():
            client.get(path, params=params)  # warm: the first request pays for caches and connections
            started = time.perf_counter()
            response = client.get(path, params=params)
            timings[name] = round((time.perf_counter() - started) * 1000, 1)
            response.raise_for_status()
            sizes[name] = len(response.content)
    # The grid's summaries of a 2,000-task run must hold every mapped instance, not an empty answer.
    timings["grid_ti_summaries_bytes"] = sizes["grid_ti_summaries"]
    return timings


def measured_stack_settings(concurrency: int, organizations: int) -> dict[str, str]:
    """What every benchmark stack runs with: `concurrency` organizations billed at once (per run, in
    the pool and in the executor), room to map every organization, no schedules (unpausing would
    otherwise start each DAG's latest tick beside the measured runs)."""
    return {
        "AIRFLOW__CORE__PARALLELISM": str(concurrency),
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(concurrency),
        "AIRFLOW__CORE__MAX_MAP_LENGTH": str(max(MAX_MAP_LENGTH, organizations)),
        "TENTMAN_MAX_ACTIVE_ORGANIZATIONS": str(concurrency),
        "TENTMAN_BILLING_POOL_SLOTS": str(concurrency),
        "TENTMAN_RENT_SCHEDULE": "manual",
        "TENTMAN_UTILITY_SCHEDULE": "manual",
        "TENTMAN_SCHEDULES_TICK": "manual",
    }


@contextlib.contextmanager
def measured_stack(
    tmp: Path,
    admin: str,
    tentman_uri: str,
    *,
    executor: str = "local",
    workers: int = 2,
    concurrency: int,
    n: int,
    extra_settings: dict[str, str] | None = None,
):
    """A live Airflow on a fresh metadata database with the benchmark settings (and `extra_settings`
    on top), room for `n` mapped tasks, the bundle's DAGs and the control DAG unpaused (none has a
    schedule here); yields the stack and a logged-in API."""
    airflow_db = f"airflow_{uuid.uuid4().hex[:6]}"
    ensure_database(admin, airflow_db)
    home = tmp / f"airflow-{executor}-{n}"
    home.mkdir()
    port = free_port()
    broker = None
    if executor == "celery":
        broker = EmbeddedBroker(home / "broker", free_port())
        broker.start()
    base = isolated_environment(
        tentman_uri=tentman_uri, metadata_uri=airflow_metadata_uri(with_database(admin, airflow_db))
    )
    passwords = write_passwords(home / "passwords.json")
    stack = AirflowStack.for_executor(
        base,
        home=home,
        port=port,
        executor=executor,
        broker_url=broker.url if broker else None,
        workers=workers,
        worker_concurrency=max(1, concurrency // max(1, workers)),
        extra_env={
            **measured_stack_settings(concurrency, n),
            "AIRFLOW__CORE__DAGS_FOLDER": str(benchmark_dags_folder(home / "dags")),
            **(extra_settings or {}),
        },
    )
    stack.migrate()
    stack.start()
    try:
        stack.wait_healthy(timeout=300)
        for dag_id in (*DAG_IDS, CONTROL_DAG_ID):
            stack.wait_for_dag(dag_id, timeout=300)
        api = AirflowApi(stack.base_url, "admin", passwords["admin"])
        for dag_id in (*DAG_IDS, CONTROL_DAG_ID):
            api.client.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
        yield stack, api
    finally:
        stack.stop()
        if broker:
            broker.stop()


def postmaster_pid(pgdata: Path) -> int | None:
    """The embedded PostgreSQL's postmaster (its backends are its children)."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and cmdline[0].endswith("postgres") and str(pgdata) in " ".join(cmdline):
            return proc.pid
    return None


def _seconds(a: str | None, b: str | None) -> float:
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds() if a and b else 0.0


def summarize(
    name: str, engine, outcome: dict, rows_label: str, rows: int, concurrency: int, cpu: dict[str, float] | None = None
) -> dict:
    run = outcome["run"]
    wall = _seconds(run["start_date"], run["end_date"])
    mapped = [t for t in outcome["task_instances"] if t["task_id"] == BILL_ORGANIZATION_TASK]
    with engine.connect() as conn:
        engine_s = conn.execute(
            sa.text(
                "SELECT coalesce(sum(extract(epoch FROM completed_at - started_at)), 0) "
                "FROM invoice_runs WHERE dag_run_id = :r"
            ),
            {"r": run["dag_run_id"]},
        ).scalar()
    task_s = [_seconds(t["start_date"], t["end_date"]) for t in mapped]
    overhead = max(0.0, wall - float(engine_s) / concurrency) / max(1, len(mapped))
    reconcile = reconcile_phase(outcome["task_instances"], wall)
    print(
        f"{name}: {RECONCILE_TASK} {reconcile['seconds']:.1f}s ({reconcile['state']}), "
        f"{reconcile['share']:.1%} of the run's {wall:.1f}s",
        flush=True,
    )
    return {
        f"{name}_state": run["state"],
        f"{name}_wall_s": round(wall, 1),
        f"{name}_mapped_tasks": len(mapped),
        f"{name}_engine_s": round(float(engine_s), 1),
        f"{name}_task_median_s": round(statistics.median(task_s), 2) if task_s else None,
        f"{name}_overhead_per_task_s": round(overhead, 3),
        f"{name}_{rows_label}_per_s": round(rows / wall) if wall else None,
        # CPU seconds per organization task, by component, over the whole run (2 cores here).
        f"{name}_cpu_per_task_s": {k: round(v / max(1, len(mapped)), 3) for k, v in sorted((cpu or {}).items())},
        # The reconciliation after the aggregation, a phase of the run: its task instance's own time.
        f"{name}_reconcile_s": round(reconcile["seconds"], 1),
        f"{name}_reconcile_share": round(reconcile["share"], 4),
        f"{name}_reconcile_state": reconcile["state"],
    }


def reconcile_phase(task_instances: list[dict], wall_s: float) -> dict:
    """The reconcile task's seconds (its start to its end), state, and share of the run's wall time."""
    [ti] = [t for t in task_instances if t["task_id"] == RECONCILE_TASK]
    seconds = _seconds(ti["start_date"], ti["end_date"])
    return {"seconds": seconds, "state": ti["state"], "share": seconds / wall_s if wall_s else 0.0}


# --- The control DAG beside billing (tentman_dev.bench.control): Airflow's floor, in the same run.

# What the control is compared on: the run's wall time and overhead per mapped task, and the CPU
# seconds per mapped task of each component.
CONTROL_FIGURES = ("wall_s", "overhead_per_task_s")


def listed_organizations(api, dag_id: str, run_id: str) -> list[int]:
    """The organization ids a billing run listed (its listing task's XCom), in its order."""
    task_instance = f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{LIST_ORGANIZATIONS_TASK}"
    response = api.client.get(f"{task_instance}/xcomEntries/return_value", params={"deserialize": True})
    response.raise_for_status()
    return response.json()["value"]


def measured_control_run(api, sampler: ProcessSampler, billing: dict, timeout: float) -> tuple[dict, dict]:
    """The control DAG over the organizations the billing run `billing` listed, on the same stack,
    right after it: its outcome and CPU seconds by component, as measured_run gives them."""
    run = billing["run"]
    organization_ids = listed_organizations(api, run["dag_id"], run["dag_run_id"])
    return measured_run(api, sampler, CONTROL_DAG_ID, control_conf(organization_ids), timeout)


def ratio(part: float | None, whole: float | None) -> float | None:
    """`part` ÷ `whole` to two decimals; None when either side was not measured (or `whole` is 0)."""
    return round(part / whole, 2) if part is not None and whole else None


def versus_control(figures: dict, billing: str, control: str = "control") -> dict:
    """The ratios billing ÷ control of a run's summarized figures (summarize's keys, prefixed
    `billing` and `control`): wall time, overhead per task, CPU-s per task of every component.
    A component either side did not measure has no ratio (None)."""
    ratios = {
        f"{billing}_vs_{control}_{figure}": ratio(
            figures.get(f"{billing}_{figure}"), figures.get(f"{control}_{figure}")
        )
        for figure in CONTROL_FIGURES
    }
    billing_cpu, control_cpu = (
        figures.get(f"{billing}_cpu_per_task_s", {}),
        figures.get(f"{control}_cpu_per_task_s", {}),
    )
    ratios[f"{billing}_vs_{control}_cpu_per_task"] = {
        component: ratio(billing_cpu.get(component), control_cpu.get(component))
        for component in sorted({*billing_cpu, *control_cpu})
    }
    return ratios


def control_table(figures: dict, billing: str, control: str = "control") -> str:
    """Billing beside the control as the benchmark prints it: one row per figure, with the ratio."""

    def cell(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    ratios = versus_control(figures, billing, control)
    rows = [
        (label, figures.get(f"{billing}_{figure}"), figures.get(f"{control}_{figure}"),
         ratios[f"{billing}_vs_{control}_{figure}"], digits)
        for label, figure, digits in (("wall s", "wall_s", 1), ("overhead/task s", "overhead_per_task_s", 3))
    ]  # fmt: skip
    billing_cpu, control_cpu = (figures.get(f"{side}_cpu_per_task_s", {}) for side in (billing, control))
    for component, ratio in ratios[f"{billing}_vs_{control}_cpu_per_task"].items():
        rows.append((f"CPU-s/task {component}", billing_cpu.get(component), control_cpu.get(component), ratio, 3))
    width = max(len(row[0]) for row in rows)
    lines = [f"{'':<{width}} {billing:>10} {control:>10} {'ratio':>7}"]
    for label, ours, floor, ratio, digits in rows:
        lines.append(
            f"{label:<{width}} {cell(ours, digits):>10} {cell(floor, digits):>10} "
            f"{'-' if ratio is None else f'{ratio:.2f}×':>7}"
        )
    return "\n".join(lines)
