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

from tentman.dev.bench.common import (
    PERIOD,
    bench_server,
    bill_rent,
    checkpoint,
    copy_floor,
    peak_rss_mb,
    rounded_stages,
    scratch_database,
    stage_table,
    vacuum_analyze,
)
from tentman.engine.common import StageTimings
from tentman.engine.utility import generate_utility_invoices


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
                   'active'
            FROM generate_series(1, :n) AS g
            """
        ),
        {"org": organization_id, "n": n},
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


def benchmark_utility(engine, organization_id: int, n_statements: int) -> dict:
    """`make bench` figures: bill N pending statements, against COPY of the same output rows."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                """
                INSERT INTO utility_statements (organization_id, lease_id, utility_type, period_start, period_end,
                                                amount, status, finalized_at)
                SELECT :org, l.id, CASE WHEN g % 2 = 0 THEN 'water' ELSE 'electricity' END,
                       DATE '2026-02-01', DATE '2026-02-28', 10 + (l.id % 9000) / 100.0, 'finalized', now()
                FROM (SELECT id, row_number() OVER (ORDER BY id) AS rn FROM leases WHERE organization_id = :org) l
                JOIN generate_series(1, :n) g ON l.rn = g
                """
            ),
            {"org": organization_id, "n": n_statements},
        )
    # From vacuumed tables, as its floor starts: the rent runs before it left a dead version of
    # every invoice and line they rewrote, which the floor's own VACUUM would otherwise spare it only.
    vacuum_analyze(engine, "invoices", "invoice_lines", "utility_statements")
    checkpoint(engine)
    timings = StageTimings()
    started = time.perf_counter()
    with engine.connect() as conn:
        result = generate_utility_invoices(
            conn, organization_id=organization_id, period=PERIOD, invoice_run_id=None, timings=timings
        )
        with timings.stage("commit"):
            conn.commit()
    billing_s = time.perf_counter() - started
    print(
        f"utility: {result.statements_billed} statements billed in {billing_s:.2f}s "
        f"({result.statements_billed / billing_s:,.0f} statements/s)",
        flush=True,
    )
    print(stage_table({"utility": billing_s}, {"utility": timings}), flush=True)
    org = int(organization_id)
    invoices = f"organization_id = {org} AND invoice_type = 'utility'"
    lines = f"line_type = 'utility' AND invoice_id IN (SELECT id FROM invoices WHERE {invoices})"
    # The floor is every row the engine wrote: the invoices, their lines, and each statement's new
    # version, linked to its line (copied back after deleting the statements).
    floor_s = copy_floor(
        engine,
        ["invoices", "invoice_lines", "utility_statements"],
        {
            "invoices": invoices,
            "invoice_lines": lines,
            "utility_statements": f"organization_id = {org} AND invoice_line_id IS NOT NULL",
        },
    )
    print(
        f"utility COPY floor: the same invoices, lines and linked statements in {floor_s:.2f}s "
        f"({n_statements / floor_s:,.0f} statements/s)",
        flush=True,
    )
    # The floor as first defined: invoices and lines only (unlinked first, so that deleting the
    # lines does not write the statements).
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE utility_statements SET invoice_line_id = NULL WHERE organization_id = :o"), {"o": org}
        )
    lines_floor_s = copy_floor(engine, ["invoices", "invoice_lines"], {"invoices": invoices, "invoice_lines": lines})
    print(
        f"utility COPY of the invoices and lines only: {lines_floor_s:.2f}s ({n_statements / lines_floor_s:,.0f} "
        "statements/s)",
        flush=True,
    )
    return {
        "utility_statements": result.statements_billed,
        "utility_statements_per_s": round(result.statements_billed / billing_s),
        "utility_copy_floor_per_s": round(n_statements / floor_s),
        "utility_vs_copy_floor": round(floor_s / billing_s, 2),
        "utility_invoices_lines_copy_per_s": round(n_statements / lines_floor_s),
        "utility_vs_invoices_lines_copy": round(lines_floor_s / billing_s, 2),
        "utility_stages_s": rounded_stages(timings),
    }


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
        checkpoint(engine)
        first_s, first = bill_rent(engine, org, timings=stages["first run"])
        print(
            f"rent first run: {first.success_count} leases billed in {first_s:.2f}s "
            f"({n / first_s:,.0f} leases/s), {first.invoices_created} invoices",
            flush=True,
        )
        checkpoint(engine)
        rerun_s, rerun = bill_rent(engine, org, timings=stages["re-run"])
        print(
            f"rent re-run:    {rerun.invoices_unchanged} unchanged, {rerun.invoices_updated} updated in "
            f"{rerun_s:.2f}s ({n / rerun_s:,.0f} leases/s)",
            flush=True,
        )
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE leases SET monthly_rent = monthly_rent + 1 WHERE organization_id = :o"), {"o": org}
            )
        checkpoint(engine)
        changed_s, changed = bill_rent(engine, org, timings=stages["changed"])
        print(
            f"rent re-run after a rent change on every lease: {changed.invoices_updated} updated in "
            f"{changed_s:.2f}s ({n / changed_s:,.0f} leases/s)",
            flush=True,
        )
        print(stage_table({"first run": first_s, "re-run": rerun_s, "changed": changed_s}, stages), flush=True)

        # The engine's memory, before the benchmark's own COPY buffers are allocated.
        engine_rss_mb = peak_rss_mb()
        floor_s = copy_floor(
            engine,
            ["invoices", "invoice_lines"],
            {
                "invoices": f"organization_id = {int(org)}",
                "invoice_lines": f"invoice_id IN (SELECT id FROM invoices WHERE organization_id = {int(org)})",
            },
        )
        print(
            f"COPY floor: the same {n} invoices and their lines in {floor_s:.2f}s ({n / floor_s:,.0f} leases/s)",
            flush=True,
        )
        figures = {
            "leases": n,
            "engine_leases_per_s": round(n / first_s),
            "rerun_leases_per_s": round(n / rerun_s),
            "changed_rerun_leases_per_s": round(n / changed_s),
            "copy_floor_leases_per_s": round(n / floor_s),
            "engine_vs_copy_floor": round(floor_s / first_s, 2),
            "peak_rss_mb": round(engine_rss_mb, 1),
            "rent_stages_s": rounded_stages(stages["first run"]),
            "rent_rerun_stages_s": rounded_stages(stages["re-run"]),
            "rent_changed_rerun_stages_s": rounded_stages(stages["changed"]),
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
