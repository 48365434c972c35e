"""`make bench-scale`: the whole pipeline at scale on live Airflow (not a test).

Generates a skewed population — by default 2,000 organizations (a few with 50,000+ leases, most
with tens to hundreds), 1,000,000 leases, recurring charges on a third, one in ten starting or
ending mid-month, 200,000 pending utility statements — then, on a live Airflow (api-server,
scheduler, dag-processor, triggerer; LocalExecutor; metadata on PostgreSQL), runs the rent DAG,
the utility DAG and the rent DAG again (idempotent re-run) for one month, and reports wall time,
engine time against Airflow overhead per mapped task, leases/s and statements/s, the raw COPY
rate of the same output rows, peak memory of the scheduler and of the largest organization's
task, and the database size. `--scale 0.1` runs a tenth of it. `--engine-only` skips Airflow: the
engines bill the month for every organization, then the largest one is timed alone against the
COPY floor of its rows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa

from tentman.billing.periods import BillingPeriod
from tentman.billing.timing import StageTimings
from tentman.billing.utility import generate_utility_invoices
from tentman.db import create_engine_from_uri
from tentman.migrate import upgrade
from tentman.names import DAG_IDS, RENT_DAG_ID, UTILITY_DAG_ID
from tentman_dev.airflow_stack import (
    MAX_MAP_LENGTH,
    AirflowApi,
    AirflowStack,
    executor_class,
    free_port,
    isolated_environment,
    write_passwords,
)
from tentman_dev.bench.common import bill_rent, copy_floor, rounded_stages, stage_table, timed_phase, vacuum_analyze
from tentman_dev.broker import EmbeddedBroker
from tentman_dev.local import (
    REPO_ROOT,
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


def generate(conn, sizes: list[int], statements: int) -> None:
    conn.execute(
        sa.text("INSERT INTO organizations (id, name) SELECT g, 'Organization ' || g FROM generate_series(1, :n) g"),
        {"n": len(sizes)},
    )
    conn.execute(sa.text("CREATE TEMP TABLE sizes (org int, n int)"))
    conn.execute(
        sa.text("INSERT INTO sizes SELECT * FROM unnest(CAST(:o AS int[]), CAST(:n AS int[]))"),
        {"o": list(range(1, len(sizes) + 1)), "n": sizes},
    )
    conn.execute(
        sa.text(
            """
        INSERT INTO leases (organization_id, unit_label, tenant_name, start_date, end_date, monthly_rent, status)
        SELECT s.org, 'U' || g, 'Tenant ' || g,
               CASE WHEN g % 20 = 0 THEN DATE '2026-03-01' + (g % 27) ELSE DATE '2025-01-01' END,
               CASE WHEN g % 20 = 10 THEN DATE '2026-03-02' + (g % 27) END,
               700 + (g % 2500) + (g % 100) / 100.0, 'active'
        FROM sizes s, generate_series(1, s.n) g
        """
        )
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
                  10 + (id % 9000) / 100.0, 'finalized'
           FROM leases WHERE id % :every = 0"""
        ),
        {"every": max(1, sum(sizes) // statements)},
    )


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
    last_task = f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/record_invoice_runs"
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
            {"task_id": "bill_organization", "limit": 50},
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
    }


@contextlib.contextmanager
def measured_stack(
    tmp: Path, admin: str, tentman_uri: str, *, executor: str = "local", workers: int = 2, concurrency: int, n: int
):
    """A live Airflow on a fresh metadata database with the benchmark settings, room for `n` mapped
    tasks, both DAGs unpaused (they have no schedule here); yields the stack and a logged-in API."""
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
        extra_env=measured_stack_settings(concurrency, n),
    )
    stack.migrate()
    stack.start()
    try:
        stack.wait_healthy(timeout=300)
        for dag_id in DAG_IDS:
            stack.wait_for_dag(dag_id, timeout=300)
        api = AirflowApi(stack.base_url, "admin", passwords["admin"])
        for dag_id in DAG_IDS:
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
    mapped = [t for t in outcome["task_instances"] if t["task_id"] == "bill_organization"]
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
    }


def largest_organization_alone(engine, sizes: list[int]) -> dict:
    """The rent engine alone (no Airflow, nothing else running) on the largest organization, for the
    next month, in the full-size database, against the COPY floor of the same rows, in one run."""
    largest = sizes.index(max(sizes)) + 1  # organizations have ids 1..n, in the order of `sizes`
    timings = StageTimings()
    with timed_phase(engine) as alone:
        bill_rent(engine, largest, NEXT_PERIOD, timings=timings)
    rows = (
        f"invoice_type = 'rent' AND organization_id = {largest} AND billing_period_start = DATE '{NEXT_PERIOD.start}'"
    )
    floor = copy_floor(
        engine,
        ["invoices", "invoice_lines"],
        {"invoices": rows, "invoice_lines": f"invoice_id IN (SELECT id FROM invoices WHERE {rows})"},
    )
    print(stage_table({"largest alone": alone.seconds}, {"largest alone": timings}), flush=True)
    print(
        f"largest organization alone: {max(sizes):,} leases in {alone.seconds:.2f}s ({alone.wal_mb:,.0f} MB of WAL); "
        f"COPY floor {floor.seconds:.2f}s ({floor.wal_mb:,.0f} MB: {floor.parts_text()}) "
        f"({floor.seconds / alone.seconds:.2f}x)",
        flush=True,
    )
    return {
        "largest_org_engine_alone_leases_per_s": round(max(sizes) / alone.seconds),
        "largest_org_copy_floor_leases_per_s": round(max(sizes) / floor.seconds),
        "largest_org_vs_copy_floor": round(floor.seconds / alone.seconds, 2),
        "largest_org_wal_mb": round(alone.wal_mb, 1),
        "largest_org_copy_floor_wal_mb": round(floor.wal_mb, 1),
        "largest_org_copy_floor_parts": floor.parts,
        "largest_org_stages_s": rounded_stages(timings),
    }


def engines_only(engine, sizes: list[int]) -> dict:
    """`--engine-only`: the month billed for every organization by the engines directly (the state
    the live runs leave), then the largest organization alone against its floor."""
    started = time.perf_counter()
    for organization_id in range(1, len(sizes) + 1):
        bill_rent(engine, organization_id, MONTH_PERIOD)
        with engine.begin() as conn:
            generate_utility_invoices(conn, organization_id=organization_id, period=MONTH_PERIOD, invoice_run_id=None)
    print(f"billed {MONTH} for {len(sizes):,} organizations in {time.perf_counter() - started:.0f}s", flush=True)
    vacuum_analyze(engine)
    return {
        "organizations": len(sizes),
        "leases": sum(sizes),
        "largest_organization_leases": max(sizes),
        **largest_organization_alone(engine, sizes),
    }


def sweep_plan(sizes: list[int], executors: str) -> list[tuple[int, str]]:
    """(organizations, executor) pairs in the order they run: size by size, each size on every
    executor that runs at it ("local,celery:2000" = local at every size, celery at 2,000 only), so
    that two executors at one size are measured one right after the other."""
    only: dict[str, set[int] | None] = {}
    for spec in (part.strip() for part in executors.split(",")):
        if not spec:
            continue
        name, _, at = spec.partition(":")
        executor_class(name)  # refuse an unknown name before anything starts
        only[name] = {int(n) for n in at.split("/")} if at else None
    return [(n, name) for n in sizes for name, at in only.items() if at is None or n in at]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the default population")
    parser.add_argument("--concurrency", type=int, default=16, help="organizations billed at once (and parallelism)")
    parser.add_argument(
        "--engine-only",
        action="store_true",
        help="no Airflow: bill the month with the engines directly, then time the largest organization alone",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        help="seconds a run may take (default 3600; a sweep: 1 s per organization, at least 3600)",
    )
    sweep = parser.add_argument_group("sweep: overhead per mapped task against the number of organizations")
    sweep.add_argument("--sweep", help="comma-separated numbers of organizations, e.g. 500,2000,5000,10000")
    sweep.add_argument("--leases-per-organization", type=int, default=5)
    sweep.add_argument(
        "--executor",
        default="local",
        help="local, celery, or both: local,celery; `celery:2000` runs that executor at those sizes only (2000/5000)",
    )
    sweep.add_argument("--workers", type=int, default=2, help="Celery workers")
    sweep.add_argument(
        "--resume", action="store_true", help="keep the points already in --out's sweep.json, measure the rest"
    )
    sweep.add_argument("--out", default=str(REPO_ROOT / "test-artifacts" / "bench-scale"), help="where figures go")
    args = parser.parse_args(argv)
    # Stopped by a signal, even when started in the background (which ignores SIGINT), the stacks
    # and embedded servers are stopped on the way out.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.sweep:
        from tentman_dev.bench.sweep import run_sweep

        sizes = [int(n) for n in args.sweep.split(",")]
        run_sweep(
            sweep_plan(sizes, args.executor),
            leases=args.leases_per_organization,
            workers=args.workers,
            concurrency=args.concurrency,
            timeout=args.timeout,  # None: from each point's size
            out_dir=Path(args.out),
            resume=args.resume,
        )
        return 0
    args.timeout = args.timeout or 3600
    organizations, leases, statements = int(2000 * args.scale), int(1_000_000 * args.scale), int(200_000 * args.scale)

    with tempfile.TemporaryDirectory(prefix="tentman-bench-scale-") as tmp:
        server = start_embedded_postgres(Path(tmp) / "pgdata", cleanup_mode="stop")
        try:
            admin = server_uri(server)
            tentman_db = f"tentman_{uuid.uuid4().hex[:6]}"
            ensure_database(admin, tentman_db)
            tentman_uri = with_database(admin, tentman_db)
            engine = create_engine_from_uri(tentman_uri)
            upgrade(engine, with_application_tables=True)
            sizes = organization_sizes(organizations, leases)
            started = time.perf_counter()
            with engine.begin() as conn:
                generate(conn, sizes, statements)
            vacuum_analyze(engine)
            print(
                f"generated {len(sizes)} organizations (largest {max(sizes):,}, median {int(statistics.median(sizes))} "
                f"leases), {sum(sizes):,} leases, ~{statements:,} statements in {time.perf_counter() - started:.0f}s",
                flush=True,
            )

            if args.engine_only:
                figures = engines_only(engine, sizes)
                engine.dispose()
                print(json.dumps(figures))
                return 0
            with measured_stack(Path(tmp), admin, tentman_uri, concurrency=args.concurrency, n=organizations) as (
                stack,
                api,
            ):
                roots = {name: proc.pid for name, proc in stack.processes.items()}
                roots["postgres"] = postmaster_pid(Path(tmp) / "pgdata")
                sampler = ProcessSampler(roots)
                sampler.start()
                figures = {
                    "organizations": len(sizes),
                    "leases": sum(sizes),
                    "largest_organization_leases": max(sizes),
                    "concurrency": args.concurrency,
                }
                conf = {"billing_month": MONTH}
                rent, cpu = measured_run(api, sampler, RENT_DAG_ID, conf, args.timeout)
                figures.update(summarize("rent", engine, rent, "leases", sum(sizes), args.concurrency, cpu))
                print(json.dumps(figures), flush=True)
                # Organizations are mapped in id order (ids 1..n): an organization is at the index of its size.
                for label, size in (("largest", max(sizes)), ("median", sorted(sizes)[len(sizes) // 2])):
                    xcom = (
                        api.client.get(
                            f"/dags/{RENT_DAG_ID}/dagRuns/{rent['run']['dag_run_id']}/taskInstances/bill_organization/xcomEntries/return_value",
                            params={"map_index": sizes.index(size), "deserialize": True},
                        )
                        .json()
                        .get("value")
                        or {}
                    )
                    figures[f"{label}_task_peak_rss_mb"] = xcom.get("peak_rss_mb")
                    figures[f"{label}_task_leases"] = xcom.get("total_leases")
                utility, cpu = measured_run(api, sampler, UTILITY_DAG_ID, conf, args.timeout)
                with engine.connect() as conn:
                    billed = conn.execute(
                        sa.text("SELECT count(*) FROM utility_statements WHERE invoice_line_id IS NOT NULL")
                    ).scalar()
                figures.update(summarize("utility", engine, utility, "statements", billed, args.concurrency, cpu))
                print(json.dumps(figures), flush=True)
                rerun, cpu = measured_run(api, sampler, RENT_DAG_ID, conf, args.timeout)
                figures.update(summarize("rent_rerun", engine, rerun, "leases", sum(sizes), args.concurrency, cpu))
                figures["ui_ms"] = ui_timings(api, stack.base_url, RENT_DAG_ID, rerun["run"]["dag_run_id"])
                sampler.stop.set()
                figures["scheduler_peak_rss_mb"] = round(sampler.peak_mb, 1)
                with engine.connect() as conn:
                    figures["database_size_mb"] = round(
                        conn.execute(sa.text("SELECT pg_database_size(current_database())")).scalar() / 2**20
                    )
                figures.update(largest_organization_alone(engine, sizes))
                engine.dispose()
        finally:
            server.cleanup()
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
