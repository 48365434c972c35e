"""`make bench-ui`: the "Billing runs" page's queries on a database with a million invoices.

Generates 2,000 organizations, 1,000,000 invoices over 24 months (rent and utility) and one
`invoice_runs` row per organization, type and month, then times each query the page's API runs
(median of 5, after one warm-up). Not a test: the figures go in docs/scaling.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import date

import sqlalchemy as sa

from tentman.billing.leases import LeaseStatus
from tentman.names import INVOICE_TYPE_OF_RUN, RUN_TYPE_OF_DAG, InvoiceStatus, RunStatus, RunType
from tentman.ui import queries
from tentman_dev.bench.common import bench_server, scratch_database, vacuum_analyze


def populate_runs_and_invoices(conn, invoices: int, organizations: int, months: int) -> None:
    per_org_month = max(1, invoices // (organizations * months * 2))
    conn.execute(
        sa.text("INSERT INTO organizations (id, name) SELECT g, 'Org ' || g FROM generate_series(1, :organizations) g"),
        {"organizations": organizations},
    )
    conn.execute(
        sa.text(
            """INSERT INTO leases (id, organization_id, unit_label, start_date, monthly_rent, status)
           SELECT (o - 1) * :per_org_month + u, o, 'U' || u, DATE '2024-01-01', 1000, :active
           FROM generate_series(1, :organizations) o, generate_series(1, :per_org_month) u"""
        ),
        {"organizations": organizations, "per_org_month": per_org_month, "active": LeaseStatus.ACTIVE},
    )
    conn.execute(
        sa.text(
            """INSERT INTO invoice_runs (organization_id, run_type, billing_period_start, billing_period_end, status,
                                     total_leases, success_count, failure_count, errors, dag_id, dag_run_id,
                                     started_at, completed_at)
           SELECT o, t, m, (m + interval '1 month - 1 day')::date,
                  CASE WHEN (o + extract(month FROM m)::int) % 50 = 0 THEN :completed_with_errors ELSE :completed END,
                  :per_org_month,
                  :per_org_month - CASE WHEN (o + extract(month FROM m)::int) % 50 = 0 THEN 1 ELSE 0 END,
                  CASE WHEN (o + extract(month FROM m)::int) % 50 = 0 THEN 1 ELSE 0 END,
                  CASE WHEN (o + extract(month FROM m)::int) % 50 = 0
                       THEN jsonb_build_array(
                                jsonb_build_object('lease_id', (o - 1) * :per_org_month + 1, 'error', 'bad'))
                       ELSE '[]' END,
                  CAST(:dag_ids AS jsonb) ->> t,
                  'scheduled__' || m, m - interval '5 days', m - interval '5 days' + (o % 97) * interval '1 second'
           FROM generate_series(1, :organizations) o,
                generate_series(DATE '2025-01-01', DATE '2025-01-01' + (:months - 1) * interval '1 month',
                                interval '1 month') m,
                unnest(CAST(:run_types AS text[])) t"""
        ),
        {
            "organizations": organizations,
            "per_org_month": per_org_month,
            "months": months,
            "run_types": list(RunType),
            "completed": RunStatus.COMPLETED,
            "completed_with_errors": RunStatus.COMPLETED_WITH_ERRORS,
            "dag_ids": json.dumps({run: dag for dag, run in RUN_TYPE_OF_DAG.items()}),
        },
    )
    conn.execute(
        sa.text(
            """INSERT INTO invoices (organization_id, lease_id, invoice_type, billing_period_start, billing_period_end,
                                 status, currency, subtotal, total, due_date, invoice_run_id)
           SELECT l.organization_id, l.id, r.invoice_type, r.billing_period_start, r.billing_period_end,
                  CASE WHEN r.billing_period_start < DATE '2026-06-01' THEN :paid ELSE :draft END,
                  'USD', 1000, 1000, r.billing_period_start, r.id
           FROM leases l
           JOIN (SELECT *, CAST(:invoice_types AS jsonb) ->> run_type AS invoice_type FROM invoice_runs) r
             ON r.organization_id = l.organization_id"""
        ),
        {"invoice_types": json.dumps(INVOICE_TYPE_OF_RUN), "paid": InvoiceStatus.PAID, "draft": InvoiceStatus.DRAFT},
    )
    # One invoice of each organization, type and month that its run did not draft (the app issued it
    # before the run): the runs list shows it apart, as one of the period's other invoices.
    conn.execute(
        sa.text(
            """UPDATE invoices
           SET invoice_run_id = NULL, status = CASE WHEN status = :draft THEN :issued ELSE status END
           WHERE lease_id IN (SELECT min(id) FROM leases GROUP BY organization_id)"""
        ),
        {"draft": InvoiceStatus.DRAFT, "issued": InvoiceStatus.ISSUED},
    )


def timed(fn, repeat: int = 5) -> float:
    fn()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return round(statistics.median(samples) * 1000, 1)


def run(admin_uri: str, invoices: int) -> dict:
    with scratch_database(admin_uri, "tentman_bench_ui") as engine:
        started = time.perf_counter()
        with engine.begin() as conn:
            populate_runs_and_invoices(conn, invoices, organizations=2000, months=24)
        vacuum_analyze(engine)
        with engine.connect() as conn:
            count = conn.execute(sa.text("SELECT count(*) FROM invoices")).scalar()
            runs = conn.execute(sa.text("SELECT count(*) FROM invoice_runs")).scalar()
        print(
            f"generated {count:,} invoices and {runs:,} invoice runs in {time.perf_counter() - started:.0f}s",
            flush=True,
        )
        since = date(2025, 12, 1)
        with engine.connect() as conn:
            figures = {
                "invoices": count,
                "invoice_runs": runs,
                "runs_first_page_ms": timed(
                    lambda: queries.list_runs(
                        conn, organization_id=None, period_start=None, status=None, run_type=None, limit=50, offset=0
                    )
                ),
                "runs_page_200_ms": timed(
                    lambda: queries.list_runs(
                        conn,
                        organization_id=None,
                        period_start=None,
                        status=None,
                        run_type=None,
                        limit=50,
                        offset=10000,
                    )
                ),
                "runs_of_one_org_ms": timed(
                    lambda: queries.list_runs(
                        conn, organization_id=1234, period_start=None, status=None, run_type=None, limit=50, offset=0
                    )
                ),
                "runs_of_one_month_with_errors_ms": timed(
                    lambda: queries.list_runs(
                        conn,
                        organization_id=None,
                        period_start=date(2026, 3, 1),
                        status=RunStatus.COMPLETED_WITH_ERRORS,
                        run_type=None,
                        limit=50,
                        offset=0,
                    )
                ),
                "trends_invoices_per_month_ms": timed(lambda: queries.invoices_per_month(conn, since)),
                "trends_failures_per_month_ms": timed(lambda: queries.failure_rate_per_month(conn, since)),
                "trends_durations_ms": timed(lambda: queries.durations(conn, since)),
            }
        return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--invoices", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    with bench_server() as admin_uri:
        figures = run(admin_uri, args.invoices)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
