"""Database access: engines for the TentMan database, from a URI or from the Airflow connection."""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, unquote, urlsplit

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from tentman.settings import TENTMAN_CONN_ID, tentman_database_uri

_SCHEMES = {"postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"}
DRIVER = "postgresql+psycopg"  # psycopg 3, for every TentMan engine


def sqlalchemy_url(uri: str) -> URL:
    """Turn an Airflow-style connection URI into a SQLAlchemy URL using psycopg 3.

    Accepts `postgresql://user:pw@host:port/db?opt=…`, including a URL-encoded socket directory as
    the host (`postgresql://postgres@%2Ftmp%2Fpg/tentman`), which is how Airflow connections name a
    Unix-socket server such as the embedded one.
    """
    parts = urlsplit(uri)
    if parts.scheme not in _SCHEMES:
        raise ValueError(
            f"unsupported database URI scheme {parts.scheme!r} in {_redact(uri)}; "
            "expected postgresql:// (or postgres://)"
        )
    host = unquote(parts.hostname or "") if parts.hostname else None
    # urlsplit lower-cases hostnames; a socket directory must keep its case, so re-read it raw.
    netloc_host = parts.netloc.rpartition("@")[2]
    if netloc_host.startswith("%2F") or netloc_host.startswith("%2f"):
        host = unquote(netloc_host.split(":")[0])
    return URL.create(
        drivername=DRIVER,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        host=host or None,
        port=parts.port,
        database=unquote(parts.path.lstrip("/")) or None,
        query=dict(parse_qsl(parts.query)),
    )


def _redact(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.password:
        return uri.replace(f":{parts.password}@", ":***@")
    return uri


def create_engine_from_uri(uri: str, **kwargs) -> Engine:
    return sa.create_engine(sqlalchemy_url(uri), **kwargs)


def tentman_engine() -> Engine:
    """Engine for the TentMan DB named by AIRFLOW_CONN_TENTMAN_DB (CLI, demo, tools)."""
    return create_engine_from_uri(tentman_database_uri())


# Extras that configure Airflow's PostgresHook itself, not the libpq connection.
_HOOK_ONLY_EXTRAS = {
    "cursor", "iam", "redshift", "redshift-serverless", "aws_conn_id", "azure_conn_id", "region_name",
    "cluster-identifier", "workgroup-name", "sqlalchemy_scheme", "sqlalchemy_query", "enable_log_db_messages",
}


def airflow_tentman_engine() -> Engine:
    """Engine for the `tentman_db` Airflow connection, as DAG tasks and the plugin reach it.

    Built from the connection's fields rather than through PostgresHook: importing the provider's
    hook costs every organization task about 0.1 s of CPU for nothing we use (`make bench-scale`).
    Its sessions are named after the task process (`application_name`), so whoever looks at
    pg_stat_activity can tell which worker process holds a lock or runs a long statement.
    """
    from airflow.sdk import BaseHook

    connection = BaseHook.get_connection(TENTMAN_CONN_ID)
    query = {key: str(value) for key, value in connection.extra_dejson.items() if key not in _HOOK_ONLY_EXTRAS}
    query["application_name"] = f"tentman-billing pid={os.getpid()}"
    url = URL.create(
        drivername=DRIVER,
        username=connection.login or None,
        password=connection.password or None,
        host=connection.host or None,
        port=connection.port or None,
        database=connection.schema or None,
        query=query,
    )
    return sa.create_engine(url)
