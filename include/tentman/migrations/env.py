"""Alembic environment for the TentMan schema. Run through `tentman db upgrade`."""

from alembic import context

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run TentMan migrations through tentman.migrate.upgrade(), which passes a connection")
    context.configure(
        connection=connection,
        transactional_ddl=True,
        version_table=config.get_main_option("version_table"),
        version_table_schema=config.get_main_option("version_table_schema"),
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported; use `tentman db upgrade`")
run_migrations_online()
