"""The bundle's own schema (`tentman_billing`), migrated with Alembic, and the checks a run starts with.

`upgrade` creates or upgrades only the bundle's own objects. The application's tables are the
application's (tentman.application_schema): created only when asked, for a standalone database.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from tentman.application_schema import (
    TABLE_NAMES,
    ContractReport,
    contract_report,
    create_application_tables,
    existing_application_tables,
    format_report,
)
from tentman.db import UnitOfWork
from tentman.names import BILLING_SCHEMA

_MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "alembic_version"  # in BILLING_SCHEMA
# Releases up to 0.1.0 kept their version table in `public`, at this revision when current.
LEGACY_VERSION_TABLE = "public.tentman_alembic_version"
LEGACY_HEAD = "0004"


def _config(connection=None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.set_main_option("version_table", VERSION_TABLE)
    config.set_main_option("version_table_schema", BILLING_SCHEMA)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


class SchemaNotReady(RuntimeError):
    """The TentMan database cannot be billed by this bundle as it is (names what is wrong and the fix)."""


def upgrade(engine: Engine, revision: str = "head", *, with_application_tables: bool = False) -> str:
    """Create or upgrade the bundle's own schema to `revision`; returns the revision now applied.

    `with_application_tables`: first create the application's tables, in a database that has none
    (a standalone one). Without it, a database with none of them is refused: it is not TentMan's,
    and would otherwise grow a second, empty TentMan schema.
    """
    with UnitOfWork(engine) as uow:
        conn = uow.connection
        # Serialise concurrent `tentman db upgrade` calls (e.g. several containers starting).
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext('tentman_migrations'))")
        if with_application_tables:
            create_application_tables(conn)
        elif not existing_application_tables(conn):
            raise SchemaNotReady(
                f"database {_database(conn)} has none of the TentMan application's tables ({', '.join(TABLE_NAMES)}) "
                f"on its search_path ({conn.exec_driver_sql('SHOW search_path').scalar()}); point "
                "AIRFLOW_CONN_TENTMAN_DB at the TentMan database, or, for a new standalone database, run "
                "`tentman db upgrade --with-application-tables`"
            )
        _check_legacy_revision(conn)
        # Created here, not by a migration: Alembic's version table lives in it. Only when missing, so a
        # role that owns a schema its DBA created needs no CREATE privilege on the database.
        if conn.exec_driver_sql(f"SELECT to_regnamespace('{BILLING_SCHEMA}')").scalar() is None:
            conn.exec_driver_sql(f"CREATE SCHEMA {BILLING_SCHEMA}")
        command.upgrade(_config(conn), revision)
        uow.commit()
    return current_revision(engine)


def downgrade(engine: Engine, revision: str) -> str | None:
    """Downgrade the bundle's own schema (`base`: back to the layout of release 0.1.0)."""
    with UnitOfWork(engine) as uow:
        uow.connection.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext('tentman_migrations'))")
        command.downgrade(_config(uow.connection), revision)
        uow.commit()
    return current_revision(engine)


def _database(conn: Connection) -> str:
    return repr(conn.exec_driver_sql("SELECT current_database()").scalar())


def _check_legacy_revision(conn: Connection) -> None:
    if conn.exec_driver_sql(f"SELECT to_regclass('{LEGACY_VERSION_TABLE}')").scalar() is None:
        return
    found = conn.exec_driver_sql(f"SELECT version_num FROM {LEGACY_VERSION_TABLE}").scalar()
    if found != LEGACY_HEAD:
        raise SchemaNotReady(
            f"this database was migrated by an older TentMan billing release to revision {found}; this release "
            f"upgrades installs at revision {LEGACY_HEAD}: upgrade it with tentman-billing 0.1.0 "
            "(`tentman db upgrade`) first"
        )


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return _current_revision(connection)


def _current_revision(connection: Connection) -> str | None:
    if connection.exec_driver_sql(f"SELECT to_regnamespace('{BILLING_SCHEMA}')").scalar() is None:
        return None
    return MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE, "version_table_schema": BILLING_SCHEMA}
    ).get_current_revision()


def head_revision() -> str:
    return ScriptDirectory.from_config(_config()).get_current_head()


def _revision_difference(conn: Connection) -> str | None:
    """How the bundle's schema differs from this release's revision, and the fix; None when it does not."""
    found, needed = _current_revision(conn), head_revision()
    if found == needed:
        return None
    return (
        f"the TentMan database's billing schema ({BILLING_SCHEMA}) is at revision "
        f"{found or 'none (never migrated)'}, and this bundle needs revision {needed}: run "
        "`tentman db upgrade` against that database (the tentman_db connection)"
    )


def schema_report(conn: Connection) -> ContractReport:
    """What `tentman db check` prints: the revision of the bundle's schema, and the application's
    tables against the contract."""
    report = contract_report(conn)
    difference = _revision_difference(conn)
    if difference:
        report.errors.insert(0, difference)
    return report


def check_schema(engine: Engine) -> list[str]:
    """What a run checks first: the bundle's schema at this release's revision, and the application's
    tables as the contract says. Raises SchemaNotReady naming every difference and its fix; returns
    the warnings (missing indexes: billing runs, slower), each with its DDL."""
    with engine.connect() as conn:
        difference = _revision_difference(conn)
        if difference:
            raise SchemaNotReady(f"{difference}, then run the DAG again")
        report = contract_report(conn)
    if not report.holds:
        raise SchemaNotReady(format_report(report) + "\n  (`tentman db check` lists the same)")
    return report.warnings
