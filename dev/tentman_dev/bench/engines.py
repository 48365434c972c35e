"""`make bench`: throughput of the billing engine against the raw COPY rate of its own output.

Generates N leases (a third with a recurring charge, one in ten starting or ending mid-month) in
one organization, bills them (first run, then an idempotent re-run), then COPYs the very rows the
engine wrote back into the same tables of the same server: that is the floor no engine can beat.
Beside each run's total it prints the seconds of every SQL stage of the engine (the engine's own
stage names, `other` for what no stage covers); the last output line is one JSON object with the
figures, the stages included.

Database: TENTMAN_BENCH_DATABASE_URL (an admin URI, a superuser's: a scratch database is created
there and dropped, and each timed phase starts after a CHECKPOINT), else an embedded PostgreSQL in a
temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import sqlalchemy as sa

from tentman.billing.leases import LeaseStatus
from tentman.billing.timing import StageTimings
from tentman.billing.utility import generate_utility_invoices
from tentman.names import InvoiceType, LineType, RunType, StatementStatus
from tentman_dev.bench.common import (
    PERIOD,
    Phase,
    bench_server,
    bill_rent,
    copy_floor,
    dump_rows,
    load_rows,
    open_bench_run,
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


def benchmark_utility(engine, organization_id: int, n_statements: int) -> dict:
    """`make bench` figures: bill N pending statements, against COPY of the same output rows."""
    with engine.begin() as conn:
        generate_statements(conn, organization_id, n_statements)
    # From vacuumed tables, as its floor starts: the rent runs before it left a dead version of
    # every invoice and line they rewrote, which the floor's own VACUUM would otherwise spare it only.
    vacuum_analyze(engine, "invoices", "invoice_lines", "utility_statements")
    invoice_run_id = open_bench_run(engine, organization_id, RunType.UTILITY)
    timings = StageTimings()
    with timed_phase(engine) as billing, engine.connect() as conn:
        result = generate_utility_invoices(
            conn, organization_id=organization_id, period=PERIOD, invoice_run_id=invoice_run_id, timings=timings
        )
        with timings.stage("commit"):
            conn.commit()
    billing_s = billing.seconds
    print(
        f"utility: {result.statements_billed} statements billed in {billing_s:.2f}s "
        f"({result.statements_billed / billing_s:,.0f} statements/s), {billing.wal_mb:,.0f} MB of WAL",
        flush=True,
    )
    print(stage_table({"utility": billing_s}, {"utility": timings}), flush=True)
    # Reconciled before the floors below rewrite the rows it checks.
    reconciled = reconcile_phase(engine, invoice_run_id, result, billing_s, "utility")
    org = int(organization_id)
    output = utility_output(org)
    # The floor is every row the engine wrote: the invoices, their lines, and each statement's new
    # version, linked to its line (copied back after deleting the statements).
    floor = copy_floor(engine, ["invoices", "invoice_lines", "utility_statements"], output)
    print(
        f"utility COPY floor: the same invoices, lines and linked statements in {floor.seconds:.2f}s "
        f"({n_statements / floor.seconds:,.0f} statements/s), {floor.wal_mb:,.0f} MB of WAL ({floor.parts_text()})",
        flush=True,
    )
    update = update_floor(engine, org)
    print(
        f"utility update floor: COPY of the invoices and lines, then one UPDATE linking the statements, in "
        f"{update.seconds:.2f}s ({n_statements / update.seconds:,.0f} statements/s), {update.wal_mb:,.0f} MB of WAL "
        f"({update.parts_text()})",
        flush=True,
    )
    # The floor as first defined: invoices and lines only (unlinked first, so that deleting the
    # lines does not write the statements).
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE utility_statements SET invoice_line_id = NULL WHERE organization_id = :organization_id"),
            {"organization_id": org},
        )
    lines_floor = copy_floor(engine, ["invoices", "invoice_lines"], output)
    print(
        f"utility COPY of the invoices and lines only: {lines_floor.seconds:.2f}s "
        f"({n_statements / lines_floor.seconds:,.0f} statements/s)",
        flush=True,
    )
    return {
        "utility_statements": result.statements_billed,
        "utility_statements_per_s": round(result.statements_billed / billing_s),
        "utility_copy_floor_per_s": round(n_statements / floor.seconds),
        "utility_vs_copy_floor": round(floor.seconds / billing_s, 2),
        "utility_invoices_lines_copy_per_s": round(n_statements / lines_floor.seconds),
        "utility_vs_invoices_lines_copy": round(lines_floor.seconds / billing_s, 2),
        "utility_update_floor_per_s": round(n_statements / update.seconds),
        "utility_vs_update_floor": round(update.seconds / billing_s, 2),
        "utility_wal_mb": round(billing.wal_mb, 1),
        "utility_copy_floor_wal_mb": round(floor.wal_mb, 1),
        "utility_update_floor_wal_mb": round(update.wal_mb, 1),
        "utility_copy_floor_parts": floor.parts,
        "utility_update_floor_parts": update.parts,
        "utility_stages_s": rounded_stages(timings),
        **reconciled,
    }


def update_floor(engine, organization_id: int) -> Phase:
    """The utility write as an UPDATE: COPY the engine's invoices and lines back in, then link the
    statements to their lines with one plain UPDATE from a prepared table of (statement, line).

    Billing cannot COPY the statements in (they are the application's rows): it updates them, and an
    update writes more than a COPY of the same rows (a new version entered in each index, the old one
    marked dead, a full-page image of each page it first touches after a checkpoint). This floor is
    what the engine's write costs at the least; it starts, as the engine did, from the statements
    unlinked and packed (VACUUM FULL) and the invoices and lines deleted.
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
        # Unlinked first, so that deleting the lines does not write the statements one by one.
        cur.execute(f"UPDATE utility_statements SET invoice_line_id = NULL WHERE organization_id = {org}")
        cur.execute(f"DELETE FROM invoice_lines WHERE {output['invoice_lines']}")
        cur.execute(f"DELETE FROM invoices WHERE {output['invoices']}")
        raw.commit()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM FULL utility_statements")
        vacuum_analyze(engine, *output)
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


def run(n: int, admin_uri: str) -> dict:
    with scratch_database(admin_uri, "tentman_bench") as engine:
        with engine.begin() as conn:
            org = conn.execute(sa.text("INSERT INTO organizations (name) VALUES ('Bench') RETURNING id")).scalar_one()
            t0 = time.perf_counter()
            generate_leases(conn, org, n)
        print(f"generated {n} leases in {time.perf_counter() - t0:.1f}s", flush=True)
        # Leases are long settled in a real database: vacuumed, their hint bits set. Freshly
        # generated ones would make the first run pay for that (and not the floor, which runs later).
        vacuum_analyze(engine, "leases", "lease_recurring_charges")

        stages = {run: StageTimings() for run in ("first run", "re-run", "changed")}
        invoice_run_id = open_bench_run(engine, org, RunType.MONTHLY_RENT)
        with timed_phase(engine) as first_phase:
            first = bill_rent(engine, org, timings=stages["first run"], invoice_run_id=invoice_run_id)
        first_s = first_phase.seconds
        print(
            f"rent first run: {first.success_count} leases billed in {first_s:.2f}s "
            f"({n / first_s:,.0f} leases/s), {first.invoices_created} invoices, {first_phase.wal_mb:,.0f} MB of WAL",
            flush=True,
        )
        # The reconcile task's work after this run: the first run's invoices, as a DAG run leaves them.
        reconciled = reconcile_phase(engine, invoice_run_id, first, first_s, "rent")
        with timed_phase(engine) as rerun_phase:
            rerun = bill_rent(engine, org, timings=stages["re-run"])
        rerun_s = rerun_phase.seconds
        print(
            f"rent re-run:    {rerun.invoices_unchanged} unchanged, {rerun.invoices_updated} updated in "
            f"{rerun_s:.2f}s ({n / rerun_s:,.0f} leases/s)",
            flush=True,
        )
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE leases SET monthly_rent = monthly_rent + 1 WHERE organization_id = :organization_id"),
                {"organization_id": org},
            )
        with timed_phase(engine) as changed_phase:
            changed = bill_rent(engine, org, timings=stages["changed"])
        changed_s = changed_phase.seconds
        print(
            f"rent re-run after a rent change on every lease: {changed.invoices_updated} updated in "
            f"{changed_s:.2f}s ({n / changed_s:,.0f} leases/s)",
            flush=True,
        )
        print(stage_table({"first run": first_s, "re-run": rerun_s, "changed": changed_s}, stages), flush=True)

        # The engine's memory, before the benchmark's own COPY buffers are allocated.
        engine_rss_mb = peak_rss_mb()
        floor = copy_floor(
            engine,
            ["invoices", "invoice_lines"],
            {
                "invoices": f"organization_id = {int(org)}",
                "invoice_lines": f"invoice_id IN (SELECT id FROM invoices WHERE organization_id = {int(org)})",
            },
        )
        print(
            f"COPY floor: the same {n} invoices and their lines in {floor.seconds:.2f}s "
            f"({n / floor.seconds:,.0f} leases/s), {floor.wal_mb:,.0f} MB of WAL ({floor.parts_text()})",
            flush=True,
        )
        figures = {
            "leases": n,
            "engine_leases_per_s": round(n / first_s),
            "rerun_leases_per_s": round(n / rerun_s),
            "changed_rerun_leases_per_s": round(n / changed_s),
            "copy_floor_leases_per_s": round(n / floor.seconds),
            "engine_vs_copy_floor": round(floor.seconds / first_s, 2),
            "rent_wal_mb": round(first_phase.wal_mb, 1),
            "copy_floor_wal_mb": round(floor.wal_mb, 1),
            "copy_floor_parts": floor.parts,
            "peak_rss_mb": round(engine_rss_mb, 1),
            "rent_stages_s": rounded_stages(stages["first run"]),
            "rent_rerun_stages_s": rounded_stages(stages["re-run"]),
            "rent_changed_rerun_stages_s": rounded_stages(stages["changed"]),
            **reconciled,
        }
        figures.update(benchmark_utility(engine, org, n))
        return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--leases", type=int, default=int(os.environ.get("BENCH_LEASES", 200_000)))
    args = parser.parse_args(argv)
    with bench_server() as admin_uri:
        figures = run(args.leases, admin_uri)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
