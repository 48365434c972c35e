"""The `tentman` command of a deployment: schema migrations (`tentman db …`), run summaries
(`tentman runs …`) and `tentman --version`. The developer commands (demo, local stacks) are
`tentman-dev`'s, which is not part of this distribution."""

from __future__ import annotations

import argparse
import sys

from tentman import __version__
from tentman.names import RENT_DAG_ID


def _db_upgrade(args) -> int:
    from tentman.db import tentman_engine
    from tentman.migrate import upgrade

    engine = tentman_engine()
    try:
        revision = upgrade(engine, args.revision)
    finally:
        engine.dispose()
    print(f"TentMan schema at revision {revision}")
    return 0


def _db_current(args) -> int:
    from tentman.db import tentman_engine
    from tentman.migrate import current_revision, head_revision

    engine = tentman_engine()
    try:
        print(f"current: {current_revision(engine)}  head: {head_revision()}")
    finally:
        engine.dispose()
    return 0


def _runs_summary(args) -> int:
    from tentman.db import UnitOfWork, tentman_engine
    from tentman.runs.summary import format_summary, run_summary

    engine = tentman_engine()
    try:
        with UnitOfWork(engine, read_only=True) as uow:
            print(format_summary(run_summary(uow.connection, args.dag_id)))
    finally:
        engine.dispose()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tentman", description="TentMan billing jobs")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="TentMan database schema").add_subparsers(dest="db_command", required=True)
    up = db.add_parser("upgrade", help="apply migrations to the DB of AIRFLOW_CONN_TENTMAN_DB")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(func=_db_upgrade)
    db.add_parser("current", help="show the applied and latest revisions").set_defaults(func=_db_current)

    runs = sub.add_parser("runs", help="invoice runs").add_subparsers(dest="runs_command", required=True)
    summary = runs.add_parser("summary", help="per-organization summary of a DAG's latest run")
    summary.add_argument("--dag-id", default=RENT_DAG_ID)
    summary.set_defaults(func=_runs_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError) as exc:
        print(f"tentman: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
