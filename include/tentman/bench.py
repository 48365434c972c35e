"""`make bench`: throughput of the billing engine against the raw COPY rate of its own output.

Generates N leases (a third with a recurring charge, one in ten starting or ending mid-month) in
one organization, bills them (first run, then an idempotent re-run), then COPYs the very rows the
engine wrote back into the same tables of the same server: that is the floor no engine can beat.
The last output line is one JSON object with the figures.

Database: TENTMAN_BENCH_DATABASE_URL (an admin URI; a scratch database is created there and
dropped), else an embedded PostgreSQL in a temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from tentman.db import create_engine_from_uri
from tentman.local import ensure_database, server_uri, start_embedded_postgres, with_database
from tentman.migrate import upgrade
from tentman.periods import BillingPeriod
from tentman.proration import ProrationMethod
from tentman.rent import generate_rent_invoices
from tentman.utility import benchmark_utility

PERIOD = BillingPeriod.for_month(2026, 3)


@contextlib.contextmanager
def bench_server():
    """Admin URI of the benchmark's server: TENTMAN_BENCH_DATABASE_URL, else an embedded one."""
    admin_uri = os.environ.get("TENTMAN_BENCH_DATABASE_URL")
    if admin_uri:
        yield admin_uri
        return
    with tempfile.TemporaryDirectory(prefix="tentman-bench-") as tmp:
        server = start_embedded_postgres(Path(tmp) / "pgdata", cleanup_mode="stop")
        try:
            yield server_uri(server)
        finally:
            server.cleanup()


@contextlib.contextmanager
def scratch_database(admin_uri: str, prefix: str):
    """An engine on a freshly migrated database, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    ensure_database(admin_uri, name)
    engine = create_engine_from_uri(with_database(admin_uri, name))
    try:
        upgrade(engine)
        yield engine
    finally:
        engine.dispose()
        admin = create_engine_from_uri(admin_uri, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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


def bill_rent(engine, organization_id: int, period: BillingPeriod = PERIOD) -> tuple[float, object]:
    started = time.perf_counter()
    with engine.begin() as conn:
        result = generate_rent_invoices(
            conn,
            organization_id=organization_id,
            period=period,
            proration_method=ProrationMethod.ACTUAL_DAYS_IN_MONTH,
            invoice_run_id=None,
        )
    return time.perf_counter() - started, result


def copy_floor(engine, tables: list[str], where: dict[str, str]) -> float:
    """Seconds to COPY the rows currently in `tables` back in, after deleting them."""
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        dumps = {}
        for table in tables:
            buf = io.BytesIO()
            with cur.copy(f"COPY (SELECT * FROM {table} WHERE {where[table]}) TO STDOUT") as copy:
                for chunk in copy:
                    buf.write(chunk)
            dumps[table] = buf.getvalue()
        for table in reversed(tables):
            cur.execute(f"DELETE FROM {table} WHERE {where[table]}")
        raw.commit()
        # Start the floor from clean tables, as the engine's first run did.
        raw.driver_connection.autocommit = True
        for table in tables:
            cur.execute(f"VACUUM ANALYZE {table}")
        raw.driver_connection.autocommit = False
        started = time.perf_counter()
        for table in tables:
            with cur.copy(f"COPY {table} FROM STDIN") as copy:
                copy.write(dumps[table])
        raw.commit()
        return time.perf_counter() - started
    finally:
        raw.close()


def run(n: int, admin_uri: str) -> dict:
    with scratch_database(admin_uri, "tentman_bench") as engine:
        with engine.begin() as conn:
            org = conn.execute(sa.text("INSERT INTO organizations (name) VALUES ('Bench') RETURNING id")).scalar_one()
            t0 = time.perf_counter()
            generate_leases(conn, org, n)
        print(f"generated {n} leases in {time.perf_counter() - t0:.1f}s", flush=True)

        first_s, first = bill_rent(engine, org)
        print(f"rent first run: {first.success_count} leases billed in {first_s:.2f}s "
              f"({n / first_s:,.0f} leases/s), {first.invoices_created} invoices", flush=True)
        rerun_s, rerun = bill_rent(engine, org)
        print(f"rent re-run:    {rerun.invoices_unchanged} unchanged, {rerun.invoices_updated} updated in "
              f"{rerun_s:.2f}s ({n / rerun_s:,.0f} leases/s)", flush=True)
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE leases SET monthly_rent = monthly_rent + 1 WHERE organization_id = :o"), {"o": org})
        changed_s, changed = bill_rent(engine, org)
        print(f"rent re-run after a rent change on every lease: {changed.invoices_updated} updated in "
              f"{changed_s:.2f}s ({n / changed_s:,.0f} leases/s)", flush=True)

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
        print(f"COPY floor: the same {n} invoices and their lines in {floor_s:.2f}s ({n / floor_s:,.0f} leases/s)",
              flush=True)
        figures = {
            "leases": n,
            "engine_leases_per_s": round(n / first_s),
            "rerun_leases_per_s": round(n / rerun_s),
            "changed_rerun_leases_per_s": round(n / changed_s),
            "copy_floor_leases_per_s": round(n / floor_s),
            "engine_vs_copy_floor": round(floor_s / first_s, 2),
            "peak_rss_mb": round(engine_rss_mb, 1),
        }
        figures.update(benchmark_utility(engine, org, n, copy_floor))
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
