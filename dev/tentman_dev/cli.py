"""The `tentman-dev` command (also `python -m tentman_dev`): what `make demo`, `make up`, `make down`,
`make env` and `make db-stop` run, and the demo data. Installed only in the development environment
(dev/pyproject.toml); the production `tentman` command has none of it."""

from __future__ import annotations

import argparse
import sys


def _command(name: str):
    """A handler from tentman_dev.commands, imported only when it runs: `tentman-dev --help` stays cheap."""

    def run(args) -> int:
        from tentman_dev import commands

        return getattr(commands, name)(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tentman-dev", description="TentMan billing: local environment and demo")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("env", help="print the local environment as shell exports").set_defaults(func=_command("dev_env"))
    demo = sub.add_parser("demo", help="what `make demo` runs")
    demo.add_argument("--rent-only", dest="with_utility", action="store_false")
    demo.set_defaults(func=_command("dev_demo"))
    sub.add_parser("load-demo", help="load the demo data set into an empty TentMan DB").set_defaults(
        func=_command("demo_load")
    )
    up = sub.add_parser("up", help="what `make up` runs: a live local Airflow on demo data")
    up.add_argument("--port", type=int, default=8080)
    up.add_argument("--executor", default="local", help="local (LocalExecutor) or celery (CeleryExecutor)")
    up.add_argument("--workers", type=int, default=2, help="Celery workers (with --executor celery)")
    up.add_argument("--timeout", type=float, default=240)
    up.set_defaults(func=_command("dev_up"))
    sub.add_parser("down", help="stop what `make up` started").set_defaults(func=_command("dev_down"))
    sub.add_parser("stop-db", help="stop the embedded PostgreSQL").set_defaults(func=_command("dev_stop_db"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError) as exc:
        print(f"tentman-dev: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
