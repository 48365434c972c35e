"""The benchmarks (dev/tentman_dev/bench: `make bench`, `make bench-scale`) report their figures."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from decimal import Decimal

import pytest
import sqlalchemy as sa

from tentman.billing.reconciliation import CHECKS_OF_RUN, STAGE
from tentman.billing.rent import RENT_STAGES
from tentman.billing.utility import UTILITY_STAGES, generate_utility_invoices
from tentman.db import create_engine_from_uri
from tentman.names import BILL_ORGANIZATION_TASK, RECONCILE_TASK, RECORD_RUNS_TASK, RunType
from tentman_dev.bench import common as bench_common
from tentman_dev.bench import engines as bench
from tentman_dev.bench import pipeline as bench_pipeline
from tentman_dev.bench import scale as bench_scale


def test_a_ratio_is_the_median_of_its_pairs_with_their_min_and_max():
    """Floor seconds ÷ engine seconds, pair by pair; the verdict is their median (of two: their mean)."""
    three = bench_common.PairedRatio()
    for engine_s, floor_s in ((10.0, 9.0), (8.0, 10.0), (12.0, 12.0)):  # 0.9, 1.25, 1.0
        three.add(engine_s, floor_s)
    assert three.ratios == [0.9, 1.25, 1.0]
    assert (three.median, three.low, three.high) == (1.0, 0.9, 1.25)
    assert three.text() == "1.00x (0.90-1.25x over 3 pairs)"
    assert three.pair_figures()[1] == {"engine_s": 8.0, "floor_s": 10.0, "ratio": 1.25}
    two = bench_common.PairedRatio([4.0, 5.0], [3.0, 5.0])  # 0.75, 1.0
    assert (two.median, two.low, two.high) == (0.875, 0.75, 1.0)
    assert bench_common.median_rate(1000, [2.0, 4.0, 5.0]) == 250  # 500, 250, 200 leases/s


@pytest.mark.parametrize("text", ["0", "-1", "three", "1.5"])
def test_bench_refuses_a_number_of_pairs_that_is_not_a_whole_number_from_one(text, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--pairs", text])
    assert f"argument --pairs: expected a whole number of pairs, at least 1; got '{text}'" in capsys.readouterr().err


def test_benchmark_reports_its_figures(pg_admin_uri, capsys):
    figures = bench.run(300, pg_admin_uri, pairs=2)
    for key in ("engine_leases_per_s", "rerun_leases_per_s", "copy_floor_leases_per_s", "peak_rss_mb"):
        assert figures[key] > 0
    assert figures["utility_vs_copy_floor"] > 0 and figures["utility_vs_invoices_lines_copy"] > 0
    assert figures["utility_vs_update_floor"] > 0 and figures["utility_update_floor_per_s"] > 0
    # Each ratio is the median of its pairs, each pair under `*_pairs`.
    for key in (
        "engine_vs_copy_floor",
        "utility_vs_update_floor",
        "utility_vs_copy_floor",
        "utility_vs_invoices_lines_copy",
    ):
        pairs = figures[f"{key}_pairs"]
        assert [list(pair) for pair in pairs] == [["engine_s", "floor_s", "ratio"]] * 2
        assert all(pair["engine_s"] > 0 and pair["floor_s"] > 0 for pair in pairs)
        # (The arithmetic itself: test_a_ratio_is_the_median_of_its_pairs_with_their_min_and_max.)
        assert min(p["ratio"] for p in pairs) <= figures[key] <= max(p["ratio"] for p in pairs)
    # The utility engine's seconds are the same run's against each of its floors.
    assert [p["engine_s"] for p in figures["utility_vs_update_floor_pairs"]] == [
        p["engine_s"] for p in figures["utility_vs_copy_floor_pairs"]
    ]
    # The WAL each engine run and each floor wrote, metered on the server.
    for key in ("rent_wal_mb", "copy_floor_wal_mb", "utility_wal_mb", "utility_copy_floor_wal_mb"):
        assert figures[key] > 0
    assert figures["utility_update_floor_wal_mb"] > 0
    # Each floor table by table (the update floor's last part is the link UPDATE).
    assert list(figures["copy_floor_parts"]) == ["invoices", "invoice_lines"]
    assert list(figures["utility_copy_floor_parts"]) == ["invoices", "invoice_lines", "utility_statements"]
    assert list(figures["utility_update_floor_parts"]) == ["invoices", "invoice_lines", "utility_statements (UPDATE)"]
    assert all(part["seconds"] > 0 for part in figures["utility_update_floor_parts"].values())
    # Every stage of each engine, then the commit, as the stage table printed them.
    for key in ("rent_stages_s", "rent_rerun_stages_s", "rent_changed_rerun_stages_s"):
        assert tuple(figures[key]) == (*RENT_STAGES, "commit")
    assert tuple(figures["utility_stages_s"]) == (*UTILITY_STAGES, "commit")
    # Each run reconciled as a phase of its own (clean: a violation stops the benchmark), check by check.
    for run_type, prefix in ((RunType.MONTHLY_RENT, "rent"), (RunType.UTILITY, "utility")):
        assert figures[f"{prefix}_reconcile_s"] > 0 and figures[f"{prefix}_reconcile_vs_engine"] > 0
        assert tuple(figures[f"{prefix}_reconcile_stages_s"]) == (STAGE, *CHECKS_OF_RUN[run_type], "commit")
    out = capsys.readouterr().out
    assert "rent reconciliation: rent_coverage, totals, hands_off, counts in " in out
    assert "utility reconciliation: utility_coverage, totals, hands_off, counts in " in out
    assert all(name in out for name in (*RENT_STAGES, *UTILITY_STAGES, "other", "commit"))
    # Every pair printed, each engine run billing everything again, then the medians.
    for pair in ("1/2", "2/2"):
        assert f"rent pair {pair}: first run 300 leases billed in " in out
        assert f"utility pair {pair}: 300 statements billed in " in out
    assert "update floor (COPY of the invoices and lines, then one UPDATE linking the statements)" in out
    assert "rent against its COPY floor: " in out and "utility against its update floor: " in out
    assert out.count(" over 2 pairs)") == 4
    json.dumps(figures)


def test_update_floor_reaches_the_state_the_utility_engine_left(engine):
    """The update floor times the utility engine's output written the plainest way (COPY of the
    invoices and lines, one UPDATE for the links): afterwards the same invoices, lines and statements
    are there, once, column for column (amounts and links included); and the engine, billing again
    from the state every pair starts from, writes them once more."""
    with engine.begin() as conn:
        org = conn.execute(sa.text("INSERT INTO organizations (name) VALUES ('Floor') RETURNING id")).scalar_one()
        bench.generate_leases(conn, org, 30)
        bench.generate_statements(conn, org, 20)
    with engine.begin() as conn:
        generate_utility_invoices(conn, organization_id=org, period=bench_common.PERIOD, invoice_run_id=None)
    output = bench.utility_output(org)
    state = {
        "invoices": f"SELECT * FROM invoices WHERE {output['invoices']} ORDER BY id",
        "invoice_lines": f"SELECT * FROM invoice_lines WHERE {output['invoice_lines']} ORDER BY id",
        "utility_statements": f"SELECT * FROM utility_statements WHERE organization_id = {org} ORDER BY id",
    }
    billed = sa.text(
        """SELECT s.id, s.amount AS statement_amount, il.amount, i.lease_id, i.total, i.status
           FROM utility_statements s
           JOIN invoice_lines il ON il.id = s.invoice_line_id
           JOIN invoices i ON i.id = il.invoice_id
           WHERE s.organization_id = :org ORDER BY s.id"""
    )

    def read() -> tuple[dict, list]:
        with engine.connect() as conn:
            rows = {table: conn.exec_driver_sql(query).all() for table, query in state.items()}
            return rows, conn.execute(billed, {"org": org}).all()

    before, links_before = read()

    phase = bench.update_floor(engine, org)

    after, links_after = read()
    assert [len(before[table]) for table in state] == [20, 20, 20] and len(links_before) == 20
    assert all(link.statement_amount == link.amount == link.total > Decimal("10.00") for link in links_before)
    assert after == before and links_after == links_before
    assert phase.seconds > 0 and phase.wal_mb > 0

    bench.reset_statements(engine, org)
    with engine.connect() as conn:
        assert conn.exec_driver_sql(state["invoices"]).all() == []
        assert (
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM utility_statements WHERE organization_id = :org AND invoice_line_id IS NULL"
                ),
                {"org": org},
            ).scalar_one()
            == 20
        )
    with engine.begin() as conn:
        again = generate_utility_invoices(conn, organization_id=org, period=bench_common.PERIOD, invoice_run_id=None)
    assert again.statements_billed == 20
    with engine.connect() as conn:
        assert [row.amount for row in conn.execute(billed, {"org": org})] == [link.amount for link in links_before]


def test_benchmark_refuses_a_role_that_may_not_checkpoint(engine, db_uri):
    """Every timed phase starts after a CHECKPOINT, which needs a superuser (or pg_checkpoint)."""
    role = f"tentman_bench_{uuid.uuid4().hex[:8]}"  # roles are server-wide: unique, and dropped after
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role}")
    as_role = create_engine_from_uri(db_uri, connect_args={"options": f"-c role={role}"})
    try:
        with pytest.raises(SystemExit, match=r"may not run CHECKPOINT: give TENTMAN_BENCH_DATABASE_URL a superuser"):
            bench_common.checkpoint(as_role)
    finally:
        as_role.dispose()
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP ROLE {role}")


def test_bench_scale_engine_only_times_the_largest_organization_in_the_population():
    """`make bench-scale BENCH_ARGS="--engine-only"` at a small scale: the whole population billed by
    the engines, then the largest organization alone beside its COPY floor (its own embedded
    PostgreSQL, in a process of its own as `make` runs it)."""
    done = subprocess.run(
        [sys.executable, "-m", "tentman_dev.bench.scale", "--scale", "0.002", "--engine-only", "--pairs", "2"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    figures = json.loads(out.strip().splitlines()[-1])
    largest = max(bench_scale.organization_sizes(4, 2000))
    assert (figures["organizations"], figures["leases"], figures["largest_organization_leases"]) == (4, 2000, largest)
    assert "billed 2026-03 for 4 organizations" in out
    assert figures["largest_org_engine_alone_leases_per_s"] > 0 and figures["largest_org_vs_copy_floor"] > 0
    pairs = figures["largest_org_vs_copy_floor_pairs"]
    assert len(pairs) == 2
    assert min(p["ratio"] for p in pairs) <= figures["largest_org_vs_copy_floor"] <= max(p["ratio"] for p in pairs)
    assert "largest organization alone, pair 2/2: " in out
    assert "largest organization alone against its COPY floor: " in out and " over 2 pairs)" in out
    assert figures["largest_org_wal_mb"] > 0
    assert list(figures["largest_org_copy_floor_parts"]) == ["invoices", "invoice_lines"]
    assert tuple(figures["largest_org_stages_s"]) == (*RENT_STAGES, "commit")


def test_bench_scale_reports_the_reconcile_task_as_a_phase_of_each_run(engine, capsys):
    """A DAG run's summary (`make bench-scale`) holds the reconcile task's time, from its task
    instance's start and end as the API lists them, and its share of the run's wall time."""
    run = {"dag_run_id": "manual__2026-03-01", "state": "success"}
    run |= {"start_date": "2026-03-01T10:00:00Z", "end_date": "2026-03-01T10:01:40Z"}  # 100 s
    task_instances = [
        {"task_id": BILL_ORGANIZATION_TASK, "map_index": i, "state": "success",
         "start_date": f"2026-03-01T10:00:{10 + i:02}Z", "end_date": f"2026-03-01T10:00:{20 + i:02}Z"}
        for i in range(3)
    ] + [
        {"task_id": RECORD_RUNS_TASK, "map_index": -1, "state": "success",
         "start_date": "2026-03-01T10:01:00Z", "end_date": "2026-03-01T10:01:02Z"},
        {"task_id": RECONCILE_TASK, "map_index": -1, "state": "success",
         "start_date": "2026-03-01T10:01:03.5Z", "end_date": "2026-03-01T10:01:38Z"},
    ]  # fmt: skip
    figures = bench_pipeline.summarize(
        "rent", engine, {"run": run, "task_instances": task_instances}, "leases", 300, concurrency=2
    )
    assert (figures["rent_wall_s"], figures["rent_mapped_tasks"]) == (100.0, 3)
    assert figures["rent_reconcile_s"] == 34.5 and figures["rent_reconcile_share"] == 0.345
    assert figures["rent_reconcile_state"] == "success"
    assert "rent: reconcile_invoice_runs 34.5s (success), 34.5% of the run's 100.0s" in capsys.readouterr().out
