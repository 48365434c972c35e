"""`make bench-scale`: the whole pipeline at scale on live Airflow (not a test).

Generates a skewed population — by default 2,000 organizations (a few with 50,000+ leases, most
with tens to hundreds), 1,000,000 leases, recurring charges on a third, one in ten starting or
ending mid-month, 200,000 pending utility statements — then, on a live Airflow (api-server,
scheduler, dag-processor, triggerer; LocalExecutor; metadata on PostgreSQL), runs the rent DAG,
the control DAG (rent's with task bodies that do nothing, over the same organizations:
tentman_dev.bench.control), the utility DAG and the rent DAG again (idempotent re-run) for one
month, and reports wall time, engine time against Airflow overhead per mapped task, rent beside
the control (wall time, overhead and CPU-s of each component per task, and their ratios),
leases/s and statements/s, the raw COPY rate of the same output rows, peak memory of the
scheduler and of the largest organization's task, and the database size. `--scale 0.1` runs a
tenth of it. `--engine-only` skips Airflow: the engines bill the month for every organization,
then the largest one is timed alone against the COPY floor of its rows, as alternating pairs
(`--pairs`, default 3; the ratio is their median).
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from tentman.billing.utility import generate_utility_invoices
from tentman.names import BILL_ORGANIZATION_TASK, RENT_DAG_ID, UTILITY_DAG_ID, InvoiceType
from tentman_dev.airflow_stack import executor_class
from tentman_dev.bench.common import (
    DEFAULT_PAIRS,
    CopyFloorPairs,
    bill_rent,
    median_parts,
    median_rate,
    median_stages,
    pairs_argument,
    stage_table,
    vacuum_analyze,
)
from tentman_dev.bench.pipeline import (
    MONTH,
    MONTH_PERIOD,
    NEXT_PERIOD,
    ProcessSampler,
    control_table,
    embedded_tentman,
    measured_control_run,
    measured_run,
    measured_stack,
    organization_sizes,
    populate_organizations,
    postmaster_pid,
    summarize,
    ui_timings,
    versus_control,
)
from tentman_dev.local import REPO_ROOT


def largest_organization_alone(engine, sizes: list[int], pairs: int) -> dict:
    """The rent engine alone (no Airflow, nothing else running) on the largest organization, for the
    next month, in the full-size database, against the COPY floor of the same rows: `pairs`
    alternating pairs (engine, floor, engine, floor…), each engine run from the month's invoices
    deleted; the ratio is the median of the pairs."""
    largest = sizes.index(max(sizes)) + 1  # organizations have ids 1..n, in the order of `sizes`
    # COPY (SELECT …) takes no bind parameters: the filter is SQL text, of values computed here.
    rows = (
        f"invoice_type = '{InvoiceType.RENT}' AND organization_id = {largest}"
        f" AND billing_period_start = DATE '{NEXT_PERIOD.start}'"
    )
    alternating = CopyFloorPairs(
        {"invoices": rows, "invoice_lines": f"invoice_id IN (SELECT id FROM invoices WHERE {rows})"}
    )
    paired, runs, floors, stages = alternating.paired, alternating.runs, alternating.floors, alternating.stages
    for pair in range(1, pairs + 1):
        _, alone = alternating.engine_run(engine, lambda timings: bill_rent(engine, largest, NEXT_PERIOD, timings))
        floor = alternating.floor_run(engine)
        print(
            f"largest organization alone, pair {pair}/{pairs}: {max(sizes):,} leases in {alone.seconds:.2f}s "
            f"({alone.wal_mb:,.0f} MB of WAL); COPY floor {floor.seconds:.2f}s ({floor.wal_mb:,.0f} MB: "
            f"{floor.parts_text()}) ({paired.ratios[-1]:.2f}x)",
            flush=True,
        )
    print(stage_table({f"pair {i}": run.seconds for i, run in enumerate(runs, 1)}, stages), flush=True)
    print(f"largest organization alone against its COPY floor: {paired.text()}", flush=True)
    return {
        "largest_org_engine_alone_leases_per_s": median_rate(max(sizes), paired.engine_s),
        "largest_org_copy_floor_leases_per_s": median_rate(max(sizes), paired.floor_s),
        "largest_org_vs_copy_floor": round(paired.median, 2),
        "largest_org_vs_copy_floor_pairs": paired.pair_figures(),
        "largest_org_wal_mb": round(statistics.median(run.wal_mb for run in runs), 1),
        "largest_org_copy_floor_wal_mb": round(statistics.median(floor.wal_mb for floor in floors), 1),
        "largest_org_copy_floor_parts": median_parts(floors),
        "largest_org_stages_s": median_stages(list(stages.values())),
    }


def engines_only(engine, sizes: list[int], pairs: int) -> dict:
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
        **largest_organization_alone(engine, sizes, pairs),
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
        "--pairs",
        type=pairs_argument,
        default=DEFAULT_PAIRS,
        help=f"the largest organization alone: engine/floor pairs, run alternately (default {DEFAULT_PAIRS})",
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
    floor = parser.add_argument_group("below the floor: Airflow settings measured pairwise on the control DAG")
    floor.add_argument(
        "--floor-settings",
        help="`all` or candidates separated by commas (tentman_dev.bench.floor.FLOOR_CANDIDATES); uses --pairs",
    )
    floor.add_argument("--floor-organizations", type=int, default=300, help="organizations of each control run")
    args = parser.parse_args(argv)
    # Stopped by a signal, even when started in the background (which ignores SIGINT), the stacks
    # and embedded servers are stopped on the way out.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.floor_settings:
        from tentman_dev.bench.floor import candidate_names, run_floor_settings

        try:
            names = candidate_names(args.floor_settings)
        except ValueError as error:
            parser.error(str(error))
        run_floor_settings(
            names,
            organizations=args.floor_organizations,
            concurrency=args.concurrency,
            pairs=args.pairs,
            timeout=args.timeout or 3600,
            out_dir=Path(args.out),
        )
        return 0
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

    with (
        tempfile.TemporaryDirectory(prefix="tentman-bench-scale-") as tmp,
        embedded_tentman(Path(tmp)) as (admin, tentman_uri, engine),
    ):
        sizes = organization_sizes(organizations, leases)
        started = time.perf_counter()
        with engine.begin() as conn:
            populate_organizations(conn, sizes, statements)
        vacuum_analyze(engine)
        print(
            f"generated {len(sizes)} organizations (largest {max(sizes):,}, median {int(statistics.median(sizes))} "
            f"leases), {sum(sizes):,} leases, ~{statements:,} statements in {time.perf_counter() - started:.0f}s",
            flush=True,
        )

        if args.engine_only:
            figures = engines_only(engine, sizes, args.pairs)
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
            # Airflow's floor: the control DAG over the same organizations, right after.
            control, cpu = measured_control_run(api, sampler, rent, args.timeout)
            figures.update(summarize("control", engine, control, "organizations", len(sizes), args.concurrency, cpu))
            figures.update(versus_control(figures, "rent"))
            print(control_table(figures, "rent"), flush=True)
            # Organizations are mapped in id order (ids 1..n): an organization is at the index of its size.
            for label, size in (("largest", max(sizes)), ("median", sorted(sizes)[len(sizes) // 2])):
                xcom = (
                    api.client.get(
                        f"/dags/{RENT_DAG_ID}/dagRuns/{rent['run']['dag_run_id']}/taskInstances/{BILL_ORGANIZATION_TASK}/xcomEntries/return_value",
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
            figures.update(largest_organization_alone(engine, sizes, args.pairs))
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
