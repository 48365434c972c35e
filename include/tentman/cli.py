"""The `tentman` command: schema migrations, demo data, run summaries and the local environment."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

RENT_DAG_ID = "tentman_monthly_rent_generation"
UTILITY_DAG_ID = "tentman_utility_billing"


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


def _demo_load(args) -> int:
    from tentman.db import tentman_engine
    from tentman.demo import load_demo_data

    engine = tentman_engine()
    try:
        with engine.begin() as conn:
            loaded = load_demo_data(conn)
    finally:
        engine.dispose()
    print("Demo data loaded." if loaded else "Demo data already present: left as it is.")
    return 0


def _runs_summary(args) -> int:
    from tentman.db import tentman_engine
    from tentman.demo import format_summary, run_summary

    engine = tentman_engine()
    try:
        with engine.connect() as conn:
            print(format_summary(run_summary(conn, args.dag_id)))
    finally:
        engine.dispose()
    return 0


def _dev_env(args) -> int:
    from tentman.local import local_environment

    env = local_environment()
    keys = sorted(k for k in env if k.startswith(("AIRFLOW", "TENTMAN")))
    for key in keys + ["PATH"]:
        print(f"export {key}={shlex.quote(env[key])}")
    return 0


def _run(cmd: list[str], env: dict, title: str) -> None:
    print(f"\n==> {title}: {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, env=env, check=True)


def _dev_demo(args) -> int:
    """`make demo`: migrate, load demo data, run the DAGs once in-process, print the summaries."""
    from tentman.demo import DEMO_RENT_LOGICAL_DATE, DEMO_UTILITY_LOGICAL_DATE
    from tentman.local import LOCAL_DIR, REPO_ROOT, local_environment

    env = local_environment()
    tentman = [sys.executable, "-m", "tentman.cli"]
    _run(["airflow", "db", "migrate"], env, "Airflow metadata DB")
    _run(tentman + ["db", "upgrade"], env, "TentMan schema")
    _run(tentman + ["demo", "load"], env, "Demo data")
    dags = [(RENT_DAG_ID, DEMO_RENT_LOGICAL_DATE)]
    if args.with_utility and (REPO_ROOT / "dags" / f"{UTILITY_DAG_ID}.py").exists():
        dags.append((UTILITY_DAG_ID, DEMO_UTILITY_LOGICAL_DATE))
    for dag_id, logical_date in dags:
        result = subprocess.run(["airflow", "dags", "test", dag_id, logical_date], env=env, capture_output=True, text=True)
        log_path = LOCAL_DIR / f"{dag_id}.log"
        log_path.write_text(result.stdout + result.stderr)
        print(f"\n==> airflow dags test {dag_id} {logical_date} (task logs: {log_path})", flush=True)
        summary = subprocess.run(tentman + ["runs", "summary", "--dag-id", dag_id], env=env)
        if result.returncode != 0:
            print(f"The DAG run failed (exit code {result.returncode}); see {log_path}.")
            if summary.returncode != 0:
                return result.returncode
    print(
        "\nDone. Run `make demo` again: the same drafts are updated in place, never duplicated."
        "\nThe embedded PostgreSQL keeps running (data in .local/pgdata); `make db-stop` stops it."
    )
    return 0


def _dev_up(args) -> int:
    """`make up`: a live Airflow (api-server, scheduler, dag-processor, triggerer) on demo data."""
    from tentman.airflow_stack import AirflowStack, stack_environment, write_passwords
    from tentman.local import LOCAL_DIR, local_environment

    home = LOCAL_DIR / "airflow"
    if any(home.glob("*.pid")):
        print("Airflow is already up (pid files in .local/airflow); `make down` stops it.")
        return 0
    env = stack_environment(local_environment(), home=home, port=args.port)
    passwords = write_passwords(home / "passwords.json")
    stack = AirflowStack(env=env, home=home, port=args.port)
    tentman = [sys.executable, "-m", "tentman.cli"]
    print("\n==> Airflow metadata DB and the billing pool", flush=True)
    try:
        stack.migrate()
    except subprocess.CalledProcessError as exc:
        print(f"`{' '.join(exc.cmd)}` failed:\n{exc.stderr or exc.stdout}", file=sys.stderr)
        return 1
    _run(tentman + ["db", "upgrade"], env, "TentMan schema")
    _run(tentman + ["demo", "load"], env, "Demo data")
    print("\n==> Starting Airflow: " + ", ".join(("api-server", "scheduler", "dag-processor", "triggerer")), flush=True)
    stack.start(detached=True)
    try:
        stack.wait_healthy(timeout=args.timeout)
        # Unpaused so a manual trigger runs at once; catchup is off, so no backlog is created.
        for dag_id in (RENT_DAG_ID, UTILITY_DAG_ID):
            stack.wait_for_dag(dag_id, timeout=args.timeout)
            stack.airflow("dags", "unpause", dag_id)
    except (RuntimeError, TimeoutError) as exc:
        print(f"Airflow did not come up: {exc}\nLogs: {stack.log_dir}", file=sys.stderr)
        return 1
    print(
        f"\nAirflow is up: {stack.base_url}\n"
        + "".join(f"  log in as {user} / {pw}\n" for user, pw in passwords.items())
        + f"  (passwords in {home / 'passwords.json'}; process logs in {stack.log_dir})\n"
        "DAGs: tentman_monthly_rent_generation, tentman_utility_billing (Trigger → params form).\n"
        "Stop with `make down`."
    )
    return 0


def _dev_down(args) -> int:
    from tentman.airflow_stack import stop_detached
    from tentman.local import LOCAL_DIR

    stopped = stop_detached(LOCAL_DIR / "airflow")
    print("Stopped: " + ", ".join(stopped) if stopped else "Airflow was not running.")
    return 0


def _dev_stop_db(args) -> int:
    from tentman.local import LOCAL_DIR

    pgdata = LOCAL_DIR / "pgdata"
    if not (pgdata / "postmaster.pid").exists():
        print("The embedded PostgreSQL is not running.")
        return 0
    from pgserver._commands import pg_ctl

    pg_ctl(["-w", "stop"], pgdata=pgdata, user="pgserver" if _is_root() else None)
    print("Embedded PostgreSQL stopped.")
    return 0


def _is_root() -> bool:
    import os

    return hasattr(os, "geteuid") and os.geteuid() == 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tentman", description="TentMan billing jobs")
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="TentMan database schema").add_subparsers(dest="db_command", required=True)
    up = db.add_parser("upgrade", help="apply migrations to the DB of AIRFLOW_CONN_TENTMAN_DB")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(func=_db_upgrade)
    db.add_parser("current", help="show the applied and latest revisions").set_defaults(func=_db_current)

    demo = sub.add_parser("demo", help="demo data").add_subparsers(dest="demo_command", required=True)
    demo.add_parser("load", help="load the demo data set into an empty TentMan DB").set_defaults(func=_demo_load)

    runs = sub.add_parser("runs", help="invoice runs").add_subparsers(dest="runs_command", required=True)
    summary = runs.add_parser("summary", help="per-organization summary of a DAG's latest run")
    summary.add_argument("--dag-id", default=RENT_DAG_ID)
    summary.set_defaults(func=_runs_summary)

    dev = sub.add_parser("dev", help="local environment").add_subparsers(dest="dev_command", required=True)
    dev.add_parser("env", help="print the local environment as shell exports").set_defaults(func=_dev_env)
    demo_cmd = dev.add_parser("demo", help="what `make demo` runs")
    demo_cmd.add_argument("--rent-only", dest="with_utility", action="store_false")
    demo_cmd.set_defaults(func=_dev_demo)
    up = dev.add_parser("up", help="what `make up` runs: a live local Airflow on demo data")
    up.add_argument("--port", type=int, default=8080)
    up.add_argument("--timeout", type=float, default=240)
    up.set_defaults(func=_dev_up)
    dev.add_parser("down", help="stop what `make up` started").set_defaults(func=_dev_down)
    dev.add_parser("stop-db", help="stop the embedded PostgreSQL").set_defaults(func=_dev_stop_db)
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
