"""Alembic environment of the 0.1.0 migrations (tests only: support.legacy.build_legacy_install)."""

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
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported; use `tentman db upgrade`")
run_migrations_online()
