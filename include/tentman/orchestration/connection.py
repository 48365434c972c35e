"""The engine for the `tentman_db` Airflow connection, as DAG tasks and the plugin reach it."""

from __future__ import annotations

import os

import sqlalchemy as sa
from airflow.sdk import BaseHook
from sqlalchemy.engine import URL, Engine

from tentman.db import DRIVER
from tentman.settings import TENTMAN_CONN_ID

# Extras that configure Airflow's PostgresHook itself, not the libpq connection.
_HOOK_ONLY_EXTRAS = {
    "cursor",
    "iam",
    "redshift",
    "redshift-serverless",
    "aws_conn_id",
    "azure_conn_id",
    "region_name",
    "cluster-identifier",
    "workgroup-name",
    "sqlalchemy_scheme",
    "sqlalchemy_query",
    "enable_log_db_messages",
}


def airflow_tentman_engine() -> Engine:
    """Engine for the `tentman_db` Airflow connection, as a task (or the plugin) reads it.

    PostgresHook is bypassed on purpose, here and only here: importing the provider's hook costs
    every organization task about 0.1 s of CPU (measured with `make bench-scale`) for nothing
    we use. The engine is built from the connection's own fields instead, with the libpq options
    of its extras.

    Its sessions are named after the task process (`application_name`), so whoever looks at
    pg_stat_activity can tell which worker process holds a lock or runs a long statement.
    """
    return engine_for_connection(BaseHook.get_connection(TENTMAN_CONN_ID))


def command_line_tentman_engine() -> Engine:
    """Engine for the `tentman_db` Airflow connection, for the `tentman` command on an Airflow host.

    Read as `airflow connections get` reads it: the environment, then the configured secrets backend,
    then Airflow's metadata database — wherever the team keeps its connections.
    """
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection

    try:
        connection = Connection.get_connection_from_secrets(TENTMAN_CONN_ID)
    except AirflowNotFoundException:
        raise RuntimeError(
            f"no Airflow connection {TENTMAN_CONN_ID!r} (looked in the environment, the secrets backend and the "
            f"metadata database): create it (`airflow connections add {TENTMAN_CONN_ID} --conn-uri "
            "postgresql://USER:PASSWORD@HOST:5432/tentman`) or set AIRFLOW_CONN_TENTMAN_DB"
        ) from None
    return engine_for_connection(connection)


def engine_for_connection(connection) -> Engine:
    """An engine from an Airflow connection's fields and the libpq options of its extras."""
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
