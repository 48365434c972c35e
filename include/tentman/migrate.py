"""Apply the TentMan schema migrations (Alembic) over an explicit engine."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from tentman.db import UnitOfWork

_MIGRATIONS = Path(__file__).with_name("migrations")
# Our own version table, so the TentMan DB may share a database with other Alembic users.
VERSION_TABLE = "tentman_alembic_version"


def _config(connection=None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.set_main_option("version_table", VERSION_TABLE)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Upgrade the schema to `revision`; returns the revision now applied."""
    with UnitOfWork(engine) as uow:
        # Serialise concurrent `tentman db upgrade` calls (e.g. several containers starting).
        uow.connection.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext('tentman_migrations'))")
        command.upgrade(_config(uow.connection), revision)
        uow.commit()
    return current_revision(engine)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()


def head_revision() -> str:
    return ScriptDirectory.from_config(_config()).get_current_head()


class SchemaNotReady(RuntimeError):
    """The TentMan database is not at the schema revision this bundle was written for."""


def check_schema(engine: Engine) -> None:
    """Raise SchemaNotReady, naming the revision found, the one needed and the command that fixes it."""
    found, needed = current_revision(engine), head_revision()
    if found != needed:
        raise SchemaNotReady(
            f"the TentMan database is at schema revision {found or 'none (never migrated)'}, and this bundle "
            f"needs revision {needed}: run `tentman db upgrade` with AIRFLOW_CONN_TENTMAN_DB set to that "
            "database, then run the DAG again"
        )
