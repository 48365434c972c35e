"""The `tentman-dev` commands: `make demo`, `make up` / `make down`, the local environment and the
demo data. tentman_dev.cli imports this module only when one of them runs."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tentman.db import UnitOfWork, tentman_engine
from tentman.names import DAG_IDS, RENT_DAG_ID, UTILITY_DAG_ID
from tentman_dev.airflow_stack import (
    AirflowApi,
    AirflowStack,
    executor_class,
    free_port,
    stop_detached,
    write_passwords,
)
from tentman_dev.broker import BROKER_URL_ENV, BrokerUnavailable, EmbeddedBroker, ping
from tentman_dev.demo import DEMO_RENT_LOGICAL_DATE, DEMO_UTILITY_LOGICAL_DATE, load_demo_data
from tentman_dev.local import LOCAL_DIR, local_environment


def demo_load(args) -> int:
    engine = tentman_engine()
    try:
        with UnitOfWork(engine) as uow:
            loaded = load_demo_data(uow.connection)
            uow.commit()
    finally:
        engine.dispose()
    print("Demo data loaded." if loaded else "Demo data already present: left as it is.")
    return 0


def dev_env(args) -> int:
    env = local_environment()
    keys = sorted(k for k in env if k.startswith(("AIRFLOW", "TENTMAN")))
    for key in keys + ["PATH"]:
        print(f"export {key}={shlex.quote(env[key])}")
    return 0


def _run(cmd: list[str], env: dict, title: str) -> None:
    print(f"\n==> {title}: {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, env=env, check=True)


def dev_demo(args) -> int:
    """`make demo`: migrate, load demo data, run the DAGs once in-process, print the summaries."""
    env = local_environment()
    tentman = [sys.executable, "-m", "tentman.cli"]
    _run(["airflow", "db", "migrate"], env, "Airflow metadata DB")
    _run(tentman + ["db", "upgrade", "--with-application-tables"], env, "TentMan schema")
    _run([sys.executable, "-m", "tentman_dev", "load-demo"], env, "Demo data")
    dags = [(RENT_DAG_ID, DEMO_RENT_LOGICAL_DATE)]
    if args.with_utility:
        dags.append((UTILITY_DAG_ID, DEMO_UTILITY_LOGICAL_DATE))
    for dag_id, logical_date in dags:
        result = subprocess.run(
            ["airflow", "dags", "test", dag_id, logical_date], env=env, capture_output=True, text=True
        )
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


def dev_up(args) -> int:
    """`make up`: a live Airflow (api-server, scheduler, dag-processor, triggerer, and Celery workers
    with EXECUTOR=celery) on demo data."""
    celery = executor_class(args.executor) == "CeleryExecutor"  # an unknown name is refused here
    home = LOCAL_DIR / "airflow"
    if any(home.glob("*.pid")):
        print("Airflow is already up (pid files in .local/airflow); `make down` stops it.")
        return 0
    home.mkdir(parents=True, exist_ok=True)
    try:
        broker_url = _broker_url(home) if celery else None
    except BrokerUnavailable as exc:
        print(f"tentman-dev: error: {exc}", file=sys.stderr)
        return 1
    stack = AirflowStack.for_executor(
        local_environment(), home=home, port=args.port, executor=args.executor, broker_url=broker_url,
        workers=args.workers,
    )  # fmt: skip
    env = stack.env
    passwords = write_passwords(home / "passwords.json")
    tentman = [sys.executable, "-m", "tentman.cli"]
    print("\n==> Airflow metadata DB and the billing pool", flush=True)
    try:
        stack.migrate()
    except subprocess.CalledProcessError as exc:
        print(f"`{' '.join(exc.cmd)}` failed:\n{exc.stderr or exc.stdout}", file=sys.stderr)
        return 1
    _run(tentman + ["db", "upgrade", "--with-application-tables"], env, "TentMan schema")
    _run([sys.executable, "-m", "tentman_dev", "load-demo"], env, "Demo data")
    print("\n==> Starting Airflow: " + ", ".join(stack.commands), flush=True)
    stack.start(detached=True)
    try:
        stack.wait_healthy(timeout=args.timeout)
        # Unpaused so a manual trigger runs at once (a metadata DB `make demo` made holds them
        # paused); catchup is off, so no backlog is created. Through the REST API: an `airflow`
        # command per DAG would spend seconds importing Airflow each.
        api = AirflowApi(stack.base_url, "admin", passwords["admin"])
        for dag_id in DAG_IDS:
            stack.wait_for_dag(dag_id, timeout=args.timeout)
            api.client.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
    except (RuntimeError, TimeoutError, httpx.HTTPError) as exc:
        print(f"Airflow did not come up: {exc}\nLogs: {stack.log_dir}", file=sys.stderr)
        return 1
    print(
        f"\nAirflow is up: {stack.base_url}\n"
        + "".join(f"  log in as {user} / {pw}\n" for user, pw in passwords.items())
        + f"  (passwords in {home / 'passwords.json'}; process logs in {stack.log_dir})\n"
        + (f"  executor {env['AIRFLOW__CORE__EXECUTOR']}, broker {broker_url}\n" if broker_url else "")
        + f"DAGs: {', '.join(DAG_IDS)} (Trigger → params form).\n"
        "Stop with `make down`."
    )
    return 0


def _broker_url(home: Path) -> str:
    """TENTMAN_REDIS_URL when set, else an embedded Valkey server that `make down` stops too."""
    if os.environ.get(BROKER_URL_ENV):
        url = os.environ[BROKER_URL_ENV]
        address = urlsplit(url)
        # Only plain redis:// is checked here (rediss:// needs TLS); Celery reports the others.
        if address.scheme == "redis" and not ping(address.port or 6379, address.hostname or "127.0.0.1"):
            raise BrokerUnavailable(
                f"{BROKER_URL_ENV}={url} does not answer PING; start that Redis, or unset {BROKER_URL_ENV} "
                "for the embedded one"
            )
        return url
    broker = EmbeddedBroker(home / "broker", free_port(), pid_file=home / "broker.pid")
    print(f"\n==> Celery broker: embedded Valkey on 127.0.0.1:{broker.port} ({BROKER_URL_ENV} is not set)", flush=True)
    broker.start()
    return broker.url


def dev_down(args) -> int:
    stopped = stop_detached(LOCAL_DIR / "airflow")
    print("Stopped: " + ", ".join(stopped) if stopped else "Airflow was not running.")
    return 0


def dev_stop_db(args) -> int:
    pgdata = LOCAL_DIR / "pgdata"
    if not (pgdata / "postmaster.pid").exists():
        print("The embedded PostgreSQL is not running.")
        return 0
    from pgserver._commands import pg_ctl

    pg_ctl(["-w", "stop"], pgdata=pgdata, user="pgserver" if _is_root() else None)
    print("Embedded PostgreSQL stopped.")
    return 0


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0
