"""The local environment of `make demo`, `make up` and the tests: an embedded PostgreSQL.

PostgreSQL comes from the `pgserver` wheel (no system install, no Docker) and listens on a Unix
socket only. Its data lives under a git-ignored folder of the checkout (`.local/pgdata`).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import sqlalchemy as sa

from tentman.db import create_engine_from_uri
from tentman.settings import TENTMAN_CONN_ENV

REPO_ROOT = Path(__file__).resolve().parents[2]  # dev/tentman_dev/local.py
# Git-ignored; TENTMAN_LOCAL_DIR moves it (the test of `make demo` runs in a temporary folder).
LOCAL_DIR = Path(os.environ.get("TENTMAN_LOCAL_DIR") or REPO_ROOT / ".local")


def start_embedded_postgres(data_dir: Path, *, cleanup_mode: str | None = None):
    """Start (or attach to) the embedded server in `data_dir`; returns the pgserver handle."""
    import pgserver

    data_dir.mkdir(parents=True, exist_ok=True)
    return pgserver.get_server(str(data_dir), cleanup_mode=cleanup_mode)


def server_uri(server, database: str = "postgres") -> str:
    """An Airflow-style URI for `database` on the embedded server (socket dir URL-encoded as host)."""
    socket_dir = parse_qs(urlsplit(server.get_uri()).query)["host"][0]
    return f"postgresql://postgres@{quote(socket_dir, safe='')}/{database}"


def with_database(uri: str, database: str) -> str:
    parts = urlsplit(uri)
    return parts._replace(path=f"/{database}").geturl()


def ensure_database(admin_uri: str, database: str) -> None:
    """CREATE DATABASE unless it exists (the name is validated: identifiers cannot be bound)."""
    if not database.replace("_", "").isalnum():
        raise ValueError(f"database name {database!r} must be letters, digits and underscores")
    engine = create_engine_from_uri(admin_uri, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": database}).first()
            if not exists:
                conn.exec_driver_sql(f'CREATE DATABASE "{database}"')
    finally:
        engine.dispose()


def airflow_metadata_uri(uri: str) -> str:
    """SQLAlchemy URI for Airflow's metadata DB from an Airflow-style postgresql:// URI."""
    parts = urlsplit(uri)
    netloc_host = parts.netloc.rpartition("@")[2]
    auth = parts.netloc.rpartition("@")[0]
    auth = f"{auth}@" if auth else ""
    if netloc_host.lower().startswith("%2f"):
        # Unix socket: psycopg2 takes the directory as a `host` query parameter.
        from urllib.parse import unquote

        return f"postgresql+psycopg2://{auth}{parts.path}?host={unquote(netloc_host)}"
    return parts._replace(scheme="postgresql+psycopg2").geturl()


def local_environment() -> dict[str, str]:
    """Environment for local Airflow commands and TentMan tools.

    Uses the databases named by AIRFLOW_CONN_TENTMAN_DB (and AIRFLOW__DATABASE__SQL_ALCHEMY_CONN)
    when set; otherwise starts the embedded PostgreSQL and creates `tentman` and `airflow` there.
    """
    env = dict(os.environ)
    tentman_uri = env.get(TENTMAN_CONN_ENV)
    if not tentman_uri:
        server = start_embedded_postgres(LOCAL_DIR / "pgdata")
        admin = server_uri(server)
        ensure_database(admin, "tentman")
        ensure_database(admin, "airflow")
        tentman_uri = server_uri(server, "tentman")
        env[TENTMAN_CONN_ENV] = tentman_uri
        env.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", airflow_metadata_uri(server_uri(server, "airflow")))
    elif "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in env:
        metadata_db = f"{urlsplit(tentman_uri).path.lstrip('/') or 'tentman'}_airflow"
        ensure_database(tentman_uri, metadata_db)
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = airflow_metadata_uri(with_database(tentman_uri, metadata_db))

    airflow_home = LOCAL_DIR / "airflow"
    airflow_home.mkdir(parents=True, exist_ok=True)
    secret_file = LOCAL_DIR / "jwt_secret"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_urlsafe(48))
        secret_file.chmod(0o600)
    env.setdefault("AIRFLOW_HOME", str(airflow_home))
    env.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO_ROOT / "dags"))
    env.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(REPO_ROOT / "plugins"))
    env.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    env.setdefault("AIRFLOW__API_AUTH__JWT_SECRET", secret_file.read_text().strip())
    env.setdefault("AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL", "5")
    # Airflow spawns `airflow` by name; make it this venv's.
    venv_bin = str(Path(os.sys.executable).parent)
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
    return env
