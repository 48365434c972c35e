"""`make bench`: throughput of the billing engine against the floor of its own output.

Generates N leases (a third with a recurring charge, one in ten starting or ending mid-month) in
one organization and bills them; then COPYs the very rows the engine wrote back into the same
tables of the same server: that is the floor no engine can beat. Each engine and its floor run as
alternating pairs (`--pairs`, default 3: engine, floor, engine, floor…, each engine run from the
same data), every pair printed, each ratio reported as the median of the pairs with its min–max.
Rent is then re-run (idempotent) and re-run after a rent change on every lease. Utility bills N
pending statements against its update floor (COPY of the invoices and lines, one UPDATE linking
the statements), its COPY floors printed beside it. Beside each run's total it prints the seconds
of every SQL stage of the engine (the engine's own stage names, `other` for what no stage covers);
the last output line is one JSON object with the figures (the medians, and each pair under
`*_pairs`), the stages included.

Database: TENTMAN_BENCH_DATABASE_URL (an admin URI, a superuser's: a scratch database is created
there and dropped, and each timed phase starts after a CHECKPOINT), else an embedded PostgreSQL in a
temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import sqlalchemy as sa

from tentman.billing.leases import LeaseStatus
from tentman.billing.timing import StageTimings
from tentman.billing.utility import generate_utility_invoices
from tentman.names import InvoiceType, LineType, RunType, StatementStatus
from tentman_dev.bench.common import (
    DEFAULT_PAIRS,
    PERIOD,
    CopyFloorPairs,
    PairedRatio,
    Phase,
    analyze,
    bench_server,
    bill_rent,
    copy_floor,
    dump_rows,
    load_rows,
    median_parts,
    median_rate,
    median_stages,
    open_bench_run,
    pairs_argument,
    peak_rss_mb,
    reconcile_phase,
    rounded_stages,
    scratch_database,
    stage_table,
    timed_phase,
    vacuum_analyze,
)


def generate_leases(conn, organization_id: int, n: int) -> None:
    """N leases in one organization, set-based: 10% mid-month, a third with a parking charge."""
    conn.execute(
        sa.text(
            """
            INSERT INTO leases (organization_id, unit_label, tenant_name, start_date, end_date, monthly_rent, status)
            SELECT :org, 'U' || g, 'Tenant ' || g,
                   CASE WHEN g % 20 = 0 THEN DATE '2026-03-01' + (g % 27) ELSE DATE '2025-01-01' END,
                   CASE WHEN g % 20 = 10 THEN DATE '2026-03-02' + (g % 27) END,
                   800 + (g % 2000) + (g % 100) / 100.0,
                   :active
            FROM generate_series(1, :count) AS g
            """
        ),
        {"org": organization_id, "count": n, "active": LeaseStatus.ACTIVE},
    )
    conn.execute(
        sa.text(
            """
            INSERT INTO lease_recurring_charges (lease_id, charge_type, description, amount, start_date)
            SELECT id, 'parking', 'Parking space', 45.50, DATE '2025-01-01'
            FROM leases WHERE organization_id = :org AND id % 3 = 0
            """
        ),
        {"org": organization_id},
    )
    conn.execute(sa.text("ANALYZE leases; ANALYZE lease_recurring_charges"))


def generate_statements(conn, organization_id: int, n: int) -> None:
    """One finalized, pending utility statement for each of the organization's first N leases."""
    conn.execute(
        sa.text(
            """
            INSERT INTO utility_statements (organization_id, lease_id, utility_type, period_start, period_end,
                                            amount, status, finalized_at)
            SELECT :org, l.id, CASE WHEN g % 2 = 0 THEN 'water' ELSE 'electricity' END,
                   DATE '2026-02-01', DATE '2026-02-28', 10 + (l.id % 9000) / 100.0, :finalized, now()
            FROM (SELECT id, row_number() OVER (ORDER BY id) AS rn FROM leases WHERE organization_id = :org) l
            JOIN generate_series(1, :count) g ON l.rn = g
            """
        ),
        {"org": organization_id, "count": n, "finalized": StatementStatus.FINALIZED},
    )


def utility_output(organization_id: int) -> dict[str, str]:
    """The rows a utility run writes for the organization, by table: WHERE clauses for the floors."""
    invoices = f"organization_id = {int(organization_id)} AND invoice_type = '{InvoiceType.UTILITY}'"
    return {
        "invoices": invoices,
        "invoice_lines": f"line_type = '{LineType.UTILITY}' AND invoice_id IN "
        f"(SELECT id FROM invoices WHERE {invoices})",
        "utility_statements": f"organization_id = {int(organization_id)} AND invoice_line_id IS NOT NULL",
    }


def reset_statements(engine, organization_id: int) -> None:
    """The state every utility run of a pair and its update floor start from: the organization's
    statements unlinked and packed (VACUUM FULL, as freshly written ones are), its utility invoices
    and lines deleted, the tables vacuumed."""
    output = utility_output(organization_id)
    with engine.begin() as conn:
        analyze(conn, *output)
        # Unlinked first, so that deleting the lines does not write the statements one by one.
        conn.execute(
            sa.text("UPDATE utility_statements SET invoice_line_id = NULL WHERE organization_id = :organization_id"),
            {"organization_id": int(organization_id)},
        )
        conn.exec_driver_sql(f"DELETE FROM invoice_lines WHERE {output['invoice_lines']}")
        conn.exec_driver_sql(f"DELETE FROM invoices WHERE {output['invoices']}")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM FULL utility_statements")
    vacuum_analyze(engine, *output)


def ratio_figures(key: str, paired: PairedRatio) -> dict:
    """A ratio as the JSON line carries it: `key` the median of the pairs, `key_pairs` each pair."""
    return {key: round(paired.median, 2), f"{key}_pairs": paired.pair_figures()}


def benchmark_rent(engine, organization_id: int, n: int, pairs: int) -> dict:
    """`make bench` figures for rent: the first run and its COPY floor as `pairs` alternating pairs,
    each from the organization's invoices deleted; then the idempotent re-run and the re-run after a
    rent change on every lease (no floor: once each, after the pairs)."""
    org = int(organization_id)
    alternating = CopyFloorPairs(
        {
            "invoices": f"organization_id = {org}",
            "invoice_lines": f"invoice_id IN (SELECT id FROM invoices WHERE organization_id = {org})",
        }
    )
    paired, first_runs, floors, stages = alternating.paired, alternating.runs, alternating.floors, alternating.stages
    for pair in range(1, pairs + 1):
        invoice_run_id = open_bench_run(engine, org, RunType.MONTHLY_RENT)
        first, first_phase = alternating.engine_run(
            engine,
            lambda timings, run_id=invoice_run_id: bill_rent(engine, org, timings=timings, invoice_run_id=run_id),
        )
        if pair == 1:
            # The engine's memory, before the floor's COPY buffers are allocated.
            engine_rss_mb = peak_rss_mb()
            # The reconcile task's work after this run: the first run's invoices, as a DAG run leaves them.
            reconciled = reconcile_phase(engine, invoice_run_id, first, first_phase.seconds, "rent")
        floor = alternating.floor_run(engine)
        print(
            f"rent pair {pair}/{pairs}: first run {first.success_count} leases billed in {first_phase.seconds:.2f}s "
            f"({n / first_phase.seconds:,.0f} leases/s), {first.invoices_created} invoices, "
            f"{first_phase.wal_mb:,.0f} MB of WAL; COPY floor {floor.seconds:.2f}s "
            f"({n / floor.seconds:,.0f} leases/s), {floor.wal_mb:,.0f} MB of WAL ({floor.parts_text()}): "
            f"{paired.ratios[-1]:.2f}x",
            flush=True,
        )
    # The re-runs find the last floor's rows: the same invoices and lines as its engine wrote.
    stages["re-run"] = StageTimings()
    with timed_phase(engine) as rerun_phase:
        rerun = bill_rent(engine, org, timings=stages["re-run"])
    print(
        f"rent re-run:    {rerun.invoices_unchanged} unchanged, {rerun.invoices_updated} updated in "
        f"{rerun_phase.seconds:.2f}s ({n / rerun_phase.seconds:,.0f} leases/s)",
        flush=True,
    )
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE leases SET monthly_rent = monthly_rent + 1 WHERE organization_id = :organization_id"),
            {"organization_id": org},
        )
    stages["changed"] = StageTimings()
    with timed_phase(engine) as changed_phase:
        changed = bill_rent(engine, org, timings=stages["changed"])
    print(
        f"rent re-run after a rent change on every lease: {changed.invoices_updated} updated in "
        f"{changed_phase.seconds:.2f}s ({n / changed_phase.seconds:,.0f} leases/s)",
        flush=True,
    )
    totals = {f"pair {i}": phase.seconds for i, phase in enumerate(first_runs, 1)}
    totals |= {"re-run": rerun_phase.seconds, "changed": changed_phase.seconds}
    print(stage_table(totals, stages), flush=True)
    print(f"rent against its COPY floor: {paired.text()}", flush=True)
    first_stages = [stages[f"pair {i}"] for i in range(1, pairs + 1)]
    return {
        "leases": n,
        "engine_leases_per_s": median_rate(n, paired.engine_s),
        "rerun_leases_per_s": round(n / rerun_phase.seconds),
        "changed_rerun_leases_per_s": round(n / changed_phase.seconds),
        "copy_floor_leases_per_s": median_rate(n, paired.floor_s),
        **ratio_figures("engine_vs_copy_floor", paired),
        "rent_wal_mb": round(statistics.median(p.wal_mb for p in first_runs), 1),
        "copy_floor_wal_mb": round(statistics.median(p.wal_mb for p in floors), 1),
        "copy_floor_parts": median_parts(floors),
        "peak_rss_mb": round(engine_rss_mb, 1),
        "rent_stages_s": median_stages(first_stages),
        "rent_rerun_stages_s": rounded_stages(stages["re-run"]),
        "rent_changed_rerun_stages_s": rounded_stages(stages["changed"]),
        **reconciled,
    }


def benchmark_utility(engine, organization_id: int, n_statements: int, pairs: int) -> dict:
    """`make bench` figures for utility: bill N pending statements, against the update floor of the
    same output, as `pairs` alternating pairs from the same statements (reset_statements); the COPY
    floors of each pair's output are printed beside it."""
    with engine.begin() as conn:
        generate_statements(conn, organization_id, n_statements)
    org = int(organization_id)
    output = utility_output(org)
    against = {"update": PairedRatio(), "copy": PairedRatio(), "lines": PairedRatio()}
    billings: list[Phase] = []
    floors: dict[str, list[Phase]] = {name: [] for name in against}
    stages: dict[str, StageTimings] = {}
    for pair in range(1, pairs + 1):
        # From vacuumed tables, as its floors start: the rent runs before it (and the floors of the
        # pair before) left dead versions of the invoices and lines that a floor's own VACUUM would
        # otherwise spare it only.
        reset_statements(engine, org)
        invoice_run_id = open_bench_run(engine, org, RunType.UTILITY)
        timings = stages[f"pair {pair}"] = StageTimings()
        with timed_phase(engine) as billing, engine.connect() as conn:
            result = generate_utility_invoices(
                conn, organization_id=org, period=PERIOD, invoice_run_id=invoice_run_id, timings=timings
            )
            with timings.stage("commit"):
                conn.commit()
        if pair == 1:
            # Reconciled before the floors below rewrite the rows it checks.
            reconciled = reconcile_phase(engine, invoice_run_id, result, billing.seconds, "utility")
        billings.append(billing)
        floors["update"].append(update_floor(engine, org))
        # Every row the engine wrote: the invoices, their lines, and each statement's new version,
        # linked to its line (copied back after deleting the statements).
        floors["copy"].append(copy_floor(engine, ["invoices", "invoice_lines", "utility_statements"], output))
        # The floor as first defined: invoices and lines only (unlinked first, so that deleting the
        # lines does not write the statements).
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE utility_statements SET invoice_line_id = NULL WHERE organization_id = :organization_id"
                ),
                {"organization_id": org},
            )
        floors["lines"].append(copy_floor(engine, ["invoices", "invoice_lines"], output))
        for name, paired in against.items():
            paired.add(billing.seconds, floors[name][-1].seconds)
        update, copy, lines = floors["update"][-1], floors["copy"][-1], floors["lines"][-1]
        print(
            f"utility pair {pair}/{pairs}: {result.statements_billed} statements billed in {billing.seconds:.2f}s "
            f"({result.statements_billed / billing.seconds:,.0f} statements/s), {billing.wal_mb:,.0f} MB of WAL\n"
            f"  update floor (COPY of the invoices and lines, then one UPDATE linking the statements): "
            f"{update.seconds:.2f}s, {update.wal_mb:,.0f} MB of WAL ({update.parts_text()}): "
            f"{against['update'].ratios[-1]:.2f}x\n"
            f"  COPY floor of the invoices, lines and linked statements: {copy.seconds:.2f}s, "
            f"{copy.wal_mb:,.0f} MB of WAL ({copy.parts_text()}): {against['copy'].ratios[-1]:.2f}x\n"
            f"  COPY of the invoices and lines only: {lines.seconds:.2f}s: {against['lines'].ratios[-1]:.2f}x",
            flush=True,
        )
    print(stage_table({f"pair {i}": b.seconds for i, b in enumerate(billings, 1)}, stages), flush=True)
    print(
        f"utility against its update floor: {against['update'].text()}; against the COPY floor: "
        f"{against['copy'].text()}; against the COPY of the invoices and lines only: {against['lines'].text()}",
        flush=True,
    )
    return {
        "utility_statements": result.statements_billed,
        "utility_statements_per_s": median_rate(result.statements_billed, against["update"].engine_s),
        "utility_copy_floor_per_s": median_rate(n_statements, against["copy"].floor_s),
        **ratio_figures("utility_vs_copy_floor", against["copy"]),
        "utility_invoices_lines_copy_per_s": median_rate(n_statements, against["lines"].floor_s),
        **ratio_figures("utility_vs_invoices_lines_copy", against["lines"]),
        "utility_update_floor_per_s": median_rate(n_statements, against["update"].floor_s),
        **ratio_figures("utility_vs_update_floor", against["update"]),
        "utility_wal_mb": round(statistics.median(p.wal_mb for p in billings), 1),
        "utility_copy_floor_wal_mb": round(statistics.median(p.wal_mb for p in floors["copy"]), 1),
        "utility_update_floor_wal_mb": round(statistics.median(p.wal_mb for p in floors["update"]), 1),
        "utility_copy_floor_parts": median_parts(floors["copy"]),
        "utility_update_floor_parts": median_parts(floors["update"]),
        "utility_stages_s": median_stages(list(stages.values())),
        **reconciled,
    }


def update_floor(engine, organization_id: int) -> Phase:
    """Utility's floor: the write as an UPDATE. COPY the engine's invoices and lines back in, then
    link the statements to their lines with one plain UPDATE from a prepared table of (statement, line).

    Billing cannot COPY the statements in (they are the application's rows): it updates them, and an
    update writes more than a COPY of the same rows (a new version entered in each index, the old one
    marked dead, a full-page image of each page it first touches after a checkpoint). This floor is
    the cheapest way PostgreSQL reaches the state the engine left; it starts where the engine did
    (reset_statements).
    """
    org = int(organization_id)
    output = utility_output(org)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        for table in output:
            cur.execute(f"ANALYZE {table}")
        dumps = {table: dump_rows(cur, table, output[table]) for table in ("invoices", "invoice_lines")}
        cur.execute(
            "CREATE TEMP TABLE floor_links AS SELECT id AS statement_id, invoice_line_id AS line_id "
            f"FROM utility_statements WHERE {output['utility_statements']}"
        )
        cur.execute("ANALYZE floor_links")
        raw.commit()
        reset_statements(engine, org)
        with timed_phase(engine) as phase:
            for table, rows in dumps.items():
                with phase.part(table, cur):
                    load_rows(cur, table, rows)
            with phase.part("utility_statements (UPDATE)", cur):
                cur.execute(
                    "UPDATE utility_statements s SET invoice_line_id = k.line_id FROM floor_links k "
                    "WHERE s.id = k.statement_id"
                )
            raw.commit()
        cur.execute("DROP TABLE floor_links")  # the connection goes back to the pool
        raw.commit()
        return phase
    finally:
        raw.close()


def run(n: int, admin_uri: str, pairs: int = DEFAULT_PAIRS) -> dict:
    with scratch_database(admin_uri, "tentman_bench") as engine:
        with engine.begin() as conn:
            org = conn.execute(sa.text("INSERT INTO organizations (name) VALUES ('Bench') RETURNING id")).scalar_one()
            t0 = time.perf_counter()
            generate_leases(conn, org, n)
        print(f"generated {n} leases in {time.perf_counter() - t0:.1f}s", flush=True)
        # Leases are long settled in a real database: vacuumed, their hint bits set. Freshly
        # generated ones would make the first run pay for that (and not the floor, which runs later).
        vacuum_analyze(engine, "leases", "lease_recurring_charges")
        figures = benchmark_rent(engine, org, n, pairs)
        figures.update(benchmark_utility(engine, org, n, pairs))
        return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--leases", type=int, default=int(os.environ.get("BENCH_LEASES", 200_000)))
    parser.add_argument(
        "--pairs",
        type=pairs_argument,
        default=DEFAULT_PAIRS,
        help=f"engine/floor pairs, run alternately; ratios are their median (default {DEFAULT_PAIRS})",
    )
    args = parser.parse_args(argv)
    with bench_server() as admin_uri:
        figures = run(args.leases, admin_uri, args.pairs)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
