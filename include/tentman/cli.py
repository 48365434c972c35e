"""The `tentman` command of a deployment: schema migrations (`tentman db …`), run summaries
(`tentman runs …`) and `tentman --version`. The developer commands (demo, local stacks) are
`tentman-dev`'s, which is not part of this distribution."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from tentman import __version__
from tentman.names import RENT_DAG_ID, RunType
from tentman.settings import TENTMAN_CONN_ENV


def tentman_engine():
    """The TentMan database of the `tentman_db` connection: AIRFLOW_CONN_TENTMAN_DB when set (no
    Airflow needed), else wherever Airflow on this host keeps its connections."""
    if os.environ.get(TENTMAN_CONN_ENV, "").strip():
        from tentman.db import tentman_engine as from_environment

        return from_environment()
    try:
        import airflow  # noqa: F401
    except ImportError:
        raise RuntimeError(
            f"{TENTMAN_CONN_ENV} is not set and Airflow is not installed here to read the tentman_db connection "
            "from: set it to a postgresql:// URI of the TentMan database"
        ) from None
    from tentman.orchestration.connection import command_line_tentman_engine

    return command_line_tentman_engine()


def _db_upgrade(args) -> int:
    from tentman.application_schema import format_report
    from tentman.migrate import schema_report, upgrade
    from tentman.names import BILLING_SCHEMA

    engine = tentman_engine()
    try:
        revision = upgrade(engine, args.revision, with_application_tables=args.with_application_tables)
        print(f"TentMan billing schema ({BILLING_SCHEMA}) at revision {revision}")
        with engine.connect() as conn:
            report = schema_report(conn)
    finally:
        engine.dispose()
    print(format_report(report))
    return 0 if report.holds else 1


def _db_downgrade(args) -> int:
    from tentman.migrate import downgrade

    engine = tentman_engine()
    try:
        revision = downgrade(engine, args.revision)
    finally:
        engine.dispose()
    print(f"TentMan billing schema at revision {revision or 'base (the layout of release 0.1.0)'}")
    return 0


def _db_check(args) -> int:
    from tentman.application_schema import format_report
    from tentman.migrate import schema_report

    engine = tentman_engine()
    try:
        with engine.connect() as conn:
            report = schema_report(conn)
    finally:
        engine.dispose()
    print(format_report(report))
    return 0 if report.holds else 1


def _db_current(args) -> int:
    from tentman.migrate import current_revision, head_revision

    engine = tentman_engine()
    try:
        print(f"current: {current_revision(engine)}  head: {head_revision()}")
    finally:
        engine.dispose()
    return 0


def _runs_summary(args) -> int:
    from tentman.db import UnitOfWork
    from tentman.runs.summary import format_summary, run_summary

    engine = tentman_engine()
    try:
        with UnitOfWork(engine, read_only=True) as uow:
            print(format_summary(run_summary(uow.connection, args.dag_id)))
    finally:
        engine.dispose()
    return 0


def _runs_reconcile(args) -> int:
    from tentman.billing.periods import BillingPeriod
    from tentman.runs.organizations import organization_labels
    from tentman.runs.reconcile import reconcile_period

    try:
        period = BillingPeriod.parse(args.billing_month)
    except ValueError as exc:
        print(f"tentman: error: --billing-month: {exc}", file=sys.stderr)
        return 2
    engine = tentman_engine()
    try:
        results = reconcile_period(engine, run_type=args.run_type, period=period, organization_id=args.organization_id)
        labels = organization_labels(engine, [r.organization_id for r in results])
    finally:
        engine.dispose()
    if not results:
        print(
            f"no {args.run_type} run billed {period.label}"
            + (f" for organization {args.organization_id}" if args.organization_id else "")
        )
    for r in results:
        print(
            f"{'ok  ' if r.ok else 'FAIL'} {labels[r.organization_id]} (invoice run {r.invoice_run_id}): {r.describe()}"
        )
    return 0 if all(r.ok for r in results) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tentman", description="TentMan billing jobs")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="TentMan database schema").add_subparsers(dest="db_command", required=True)
    up = db.add_parser(
        "upgrade",
        help="create or upgrade the bundle's own schema (tentman_billing) in the TentMan database, then check it",
    )
    up.add_argument("revision", nargs="?", default="head")
    up.add_argument(
        "--with-application-tables",
        action="store_true",
        help="first create the application's tables, in a standalone database that has none of them",
    )
    up.set_defaults(func=_db_upgrade)
    down = db.add_parser(
        "downgrade",
        help="downgrade the bundle's own schema; `base` puts it back as release 0.1.0 had it (in public)",
    )
    down.add_argument("revision")
    down.set_defaults(func=_db_downgrade)
    db.add_parser(
        "check",
        help="compare the database with the schema contract; exit 1 listing every difference and its fix",
    ).set_defaults(func=_db_check)
    db.add_parser("current", help="show the applied and latest revisions").set_defaults(func=_db_current)

    runs = sub.add_parser("runs", help="invoice runs").add_subparsers(dest="runs_command", required=True)
    summary = runs.add_parser("summary", help="per-organization summary of a DAG's latest run")
    summary.add_argument("--dag-id", default=RENT_DAG_ID)
    summary.set_defaults(func=_runs_summary)
    reconcile = runs.add_parser(
        "reconcile",
        help="re-run the reconciliation of each organization's latest run of a month; exit 1 on any violation",
    )
    reconcile.add_argument("--billing-month", required=True, metavar="YYYY-MM")
    reconcile.add_argument("--run-type", required=True, choices=[t.value for t in RunType])
    reconcile.add_argument("--organization-id", type=int)
    reconcile.set_defaults(func=_runs_reconcile)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Alembic's "Context impl …" lines are noise in a command that prints its own outcome (Airflow's
    # logging, set up when the connection is read from Airflow, would print them).
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except (ValueError, RuntimeError) as exc:
        print(f"tentman: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
