"""A real Airflow installation on this machine: api-server, scheduler, dag-processor, triggerer.

Used by `make up` / `make down` (detached; pid files in the stack's home, `.local/airflow`), by
the end-to-end tests (each test session starts its own stack on fresh databases and a free port)
and by `make bench-scale`. LocalExecutor, metadata on PostgreSQL, login required (simple auth
manager with an admin and a viewer user).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tentman.deployment import FAILURE_DETECTION, MAX_MAP_LENGTH, SCHEDULING
from tentman.settings import BILLING_POOL, BILLING_POOL_DESCRIPTION, DEFAULT_POOL, billing_pool, billing_pool_slots
from tentman_dev.local import REPO_ROOT

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
# `make up EXECUTOR=…`: the executors a local stack runs, by the name the Makefile takes.
EXECUTORS = {"local": "LocalExecutor", "celery": "CeleryExecutor"}


def executor_class(name: str) -> str:
    """The Airflow executor class of `name` (local, celery); a ValueError lists the accepted ones."""
    try:
        return EXECUTORS[name.strip().lower()]
    except KeyError:
        raise ValueError(f"executor {name!r} is not supported; expected one of {', '.join(EXECUTORS)}") from None


def component_hostname() -> str:
    """Airflow's hostname of a stack process: its component name when the stack set one
    (TENTMAN_COMPONENT_NAME), so a task instance says which worker ran it and a job which scheduler."""
    return os.environ.get("TENTMAN_COMPONENT_NAME") or socket.getfqdn()


def component_environments(commands: dict[str, list[str]]) -> dict[str, dict[str, str]]:
    """Per-process settings of a Celery stack: each scheduler and worker named after its component."""
    return {
        name: {
            "TENTMAN_COMPONENT_NAME": name,
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.component_hostname",
        }
        for name in commands
        if name.startswith(("scheduler", "worker-"))
    }


def component_commands(
    *, executor: str = "local", workers: int = 0, schedulers: int = 1, worker_concurrency: int = 8
) -> dict[str, list[str]]:
    """The processes of a stack, by name: Airflow's components, more schedulers, Celery workers."""
    commands = {name: ["airflow", name] for name in COMPONENTS}
    for number in range(2, schedulers + 1):
        commands[f"scheduler-{number}"] = ["airflow", "scheduler"]
    if executor_class(executor) == "CeleryExecutor":
        for number in range(1, max(1, workers) + 1):
            # -s: no log server of its own (one port per stack; a second worker would need another);
            # the api-server reads the task logs from the log folder the components share here.
            commands[f"worker-{number}"] = [
                "airflow", "celery", "worker", "-H", f"w{number}@%h", "-c", str(worker_concurrency), "-s",
            ]  # fmt: skip
    return commands


USERS = {"admin": "admin", "viewer": "viewer"}  # user name -> role


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_server_ports() -> dict[str, str]:
    """Free ports for the log servers of one stack (the LocalExecutor's, in its scheduler, and the
    triggerer's). The api-server reads a task's log from the log server of the host that ran it,
    at the port its own settings name: every process of the stack shares these settings."""
    return {
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
    }


def write_passwords(path: Path, passwords: dict[str, str] | None = None) -> dict[str, str]:
    """The simple auth manager's passwords file; random passwords unless given, kept if present."""
    if path.exists() and passwords is None:
        return json.loads(path.read_text())
    passwords = passwords or {user: secrets.token_urlsafe(12) for user in USERS}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(passwords))
    path.chmod(0o600)
    return passwords


def read_metadata(env: dict[str, str], sql: str, **params):
    """The first column of the first row `sql` returns from the Airflow metadata DB of `env`: one
    query, where an `airflow` command would spend seconds importing Airflow first."""
    import sqlalchemy as sa

    metadata = sa.create_engine(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], poolclass=sa.pool.NullPool)
    try:
        with metadata.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()
    finally:
        metadata.dispose()


def isolated_environment(*, tentman_uri: str, metadata_uri: str) -> dict[str, str]:
    """Base environment of a throw-away stack: this process's environment without any Airflow or
    TentMan settings, plus the given databases, this bundle, a fresh JWT secret and this venv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TENTMAN_"))}
    env.update(
        {
            "AIRFLOW_CONN_TENTMAN_DB": tentman_uri,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_uri,
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(48),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    return env


def with_local_settings(env: dict[str, str]) -> dict[str, str]:
    """Put config/airflow_local_settings.py (preloads the billing tasks' imports) on PYTHONPATH."""
    paths = [str(REPO_ROOT / "config")] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**env, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


def stack_environment(
    base_env: dict[str, str], *, home: Path, port: int, executor: str = "local", broker_url: str | None = None
) -> dict[str, str]:
    """Settings of a local production-like stack, on top of `base_env` (databases, paths)."""
    env = with_local_settings(base_env)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__EXECUTOR": executor_class(executor),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in USERS.items()),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # New DAG files show up within seconds, not the 5-minute default.
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            # Our stacks opt into the billing pool (migrate() creates it first).
            "TENTMAN_BILLING_POOL": BILLING_POOL,
            # One mapped task per organization: room for ten thousand and more (the default is 1024).
            "AIRFLOW__CORE__MAX_MAP_LENGTH": str(MAX_MAP_LENGTH),
            # The scheduler's and the triggerer's log servers on ports of this stack's own, not
            # Airflow's fixed 8793 and 8794: `make test` runs two stacks on the machine at once.
            **log_server_ports(),
        }
    )
    env.update(FAILURE_DETECTION)
    env.update(SCHEDULING)
    if env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor":
        if not broker_url:
            raise ValueError("the CeleryExecutor needs a broker URL (redis://HOST:PORT/DB)")
        env["AIRFLOW__CELERY__BROKER_URL"] = broker_url
        # Task results in the metadata PostgreSQL: nothing else to run or to lose.
        env["AIRFLOW__CELERY__RESULT_BACKEND"] = "db+" + env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    env.setdefault("AIRFLOW__CORE__PARALLELISM", "8")
    return env


@dataclass
class AirflowStack:
    """The processes of one local Airflow installation."""

    env: dict[str, str]
    home: Path
    port: int
    # What start() runs, by name (component_commands()); LocalExecutor's four components by default.
    commands: dict[str, list[str]] = field(default_factory=component_commands)
    # Settings of single processes on top of `env`, by name (component_environments()).
    component_env: dict[str, dict[str, str]] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @classmethod
    def for_executor(
        cls,
        base_env: dict[str, str],
        *,
        home: Path,
        port: int,
        executor: str = "local",
        broker_url: str | None = None,
        workers: int = 0,
        schedulers: int = 1,
        worker_concurrency: int = 8,
        extra_env: dict[str, str] | None = None,
    ) -> AirflowStack:
        """A local stack on `executor`: its settings, its processes and, on Celery, each scheduler and
        worker named after its component. `extra_env` goes last (tests' and benchmarks' overrides)."""
        env = {**stack_environment(base_env, home=home, port=port, executor=executor, broker_url=broker_url),
               **(extra_env or {})}  # fmt: skip
        commands = component_commands(
            executor=executor, workers=workers, schedulers=schedulers, worker_concurrency=worker_concurrency
        )
        celery = executor_class(executor) == "CeleryExecutor"
        return cls(
            env=env, home=home, port=port, commands=commands,
            component_env=component_environments(commands) if celery else {},
        )  # fmt: skip

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_dir(self) -> Path:
        return self.home / "process-logs"

    def airflow(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["airflow", *args], env=self.env, capture_output=True, text=True, check=check, timeout=timeout
        )

    def migrate(self) -> None:
        """Migrate the metadata DB and create the billing pool the stack opted into."""
        self.airflow("db", "migrate")
        pool = billing_pool(self.env)
        if pool != DEFAULT_POOL:
            self.airflow("pools", "set", pool, str(billing_pool_slots(self.env)), BILLING_POOL_DESCRIPTION)

    def start(self, components: tuple[str, ...] | None = None, *, detached: bool = False) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in components or tuple(self.commands):
            # The child keeps its own copy of the file descriptor; ours is closed once it started.
            with open(self.log_dir / f"{name}.log", "ab") as log:
                self.processes[name] = subprocess.Popen(
                    self.commands[name],
                    env={**self.env, **self.component_env.get(name, {})},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            if detached:
                (self.home / f"{name}.pid").write_text(str(self.processes[name].pid))

    def wait_healthy(self, timeout: float = 180) -> None:
        """Wait until the api-server answers, the scheduler, dag-processor and triggerer report healthy
        and every Celery worker is ready."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"airflow {name} exited with {proc.returncode}; see {self.log_dir / (name + '.log')}"
                    )
            try:
                with urllib.request.urlopen(f"{self.base_url}/api/v2/monitor/health", timeout=5) as resp:
                    health = json.load(resp)
                last = health
                wanted = [
                    c for c in ("scheduler", "dag_processor", "triggerer") if c.replace("_", "-") in self.processes
                ]
                if all((health.get(c) or {}).get("status") == "healthy" for c in ["metadatabase"] + wanted) and all(
                    self.worker_ready(name) for name in self.processes if name.startswith("worker-")
                ):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                pass
            time.sleep(1)
        raise TimeoutError(f"Airflow did not become healthy within {timeout:.0f}s (last health: {last})")

    def worker_ready(self, name: str) -> bool:
        """Whether Celery worker `name` has connected to the broker and takes tasks."""
        log = self.log_dir / f"{name}.log"
        return log.exists() and b" ready." in log.read_bytes()

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> None:
        """Wait until the dag-processor has parsed `dag_id` into the metadata DB: its `dag` row (what
        `airflow dags details` reads) and its serialized form (what the scheduler runs). Read with one
        query a second, not an `airflow` command (seconds of imports each)."""
        parsed = "SELECT EXISTS (SELECT FROM dag JOIN serialized_dag USING (dag_id) WHERE dag_id = :dag_id)"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if read_metadata(self.env, parsed, dag_id=dag_id):
                return
            time.sleep(1)
        raise TimeoutError(f"DAG {dag_id} was not parsed within {timeout:.0f}s; see {self.log_dir}")

    def stop(self, components: tuple[str, ...] | None = None, timeout: float = 30) -> None:
        names = list(components or self.processes)
        for name in names:
            proc = self.processes.get(name)
            if proc and proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name in names:
            proc = self.processes.get(name)
            if proc is None:
                continue
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            # Task processes started by the executor live in the same session: end them too.
            _signal_group(proc.pid, signal.SIGKILL)
            self.processes.pop(name, None)

    def kill(self) -> None:
        """SIGKILL every process and what it started, at once: for a throw-away stack whose databases
        go next, which needs no orderly stop (the scheduler alone may take 30 s for one)."""
        for proc in self.processes.values():
            _signal_group(proc.pid, signal.SIGKILL)
        for proc in self.processes.values():
            proc.wait(timeout=10)
        self.processes.clear()


class AirflowApi:
    """A small client of Airflow's REST API v2, logged in as one user (or anonymous)."""

    def __init__(self, base_url: str, user: str | None = None, password: str | None = None):
        import httpx

        headers = {}
        if user:
            token = httpx.post(f"{base_url}/auth/token", json={"username": user, "password": password}, timeout=30)
            token.raise_for_status()
            headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        self.client = httpx.Client(base_url=f"{base_url}/api/v2", headers=headers, timeout=60)

    def trigger(self, dag_id: str, conf: dict):
        return self.client.post(f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})

    def run(self, dag_id: str, run_id: str) -> dict:
        response = self.client.get(f"/dags/{dag_id}/dagRuns/{run_id}")
        response.raise_for_status()
        return response.json()

    def wait(self, dag_id: str, run_id: str, timeout: float = 300, poll: float = 1.0) -> dict:
        """Poll the run until it ends (success or failed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.run(dag_id, run_id)
            if run["state"] in ("success", "failed"):
                return run
            time.sleep(poll)
        raise TimeoutError(f"{dag_id} run {run_id} still {run['state']} after {timeout}s")

    def task_instances(self, dag_id: str, run_id: str) -> dict:
        """All task instances of a run, keyed by (task_id, map_index), paging through the API."""
        found, offset = {}, 0
        while True:
            response = self.client.get(
                f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100, "offset": offset}
            )
            response.raise_for_status()
            page = response.json()["task_instances"]
            found.update({(ti["task_id"], ti["map_index"]): ti for ti in page})
            offset += 100
            if len(page) < 100:
                return found

    def tries(self, dag_id: str, run_id: str, task_id: str, map_index: int) -> list[dict]:
        response = self.client.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/tries")
        response.raise_for_status()
        return sorted(response.json()["task_instances"], key=lambda t: t["try_number"])


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_detached(home: Path, timeout: float = 30) -> list[str]:
    """`make down`: stop the processes whose pid files `make up` left in `home`."""
    stopped = []
    pids = {}
    for pid_file in sorted(home.glob("*.pid")):
        try:
            pids[pid_file] = int(pid_file.read_text().strip())
        except ValueError:
            pid_file.unlink()
    for pid in pids.values():
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for pid_file, pid in pids.items():
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        _signal_group(pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)
        stopped.append(pid_file.stem)
    return stopped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of nobody we wait for still answers kill(0): check its state.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
