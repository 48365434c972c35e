"""The `tentman` command (the wheel's), run as a user runs it."""

from __future__ import annotations

from support.commands import tentman


def test_db_upgrade_applies_the_migrations(pg_admin_uri):
    from support.databases import create_database, drop_database
    from tentman_dev.local import with_database

    name = create_database(pg_admin_uri, "tentman_cli")
    try:
        uri = with_database(pg_admin_uri, name)
        out = tentman("db", "upgrade", "--with-application-tables", env_extra={"AIRFLOW_CONN_TENTMAN_DB": uri})
        assert out.returncode == 0, out.stderr
        assert "TentMan billing schema (tentman_billing) at revision 0" in out.stdout
        again = tentman("db", "upgrade", env_extra={"AIRFLOW_CONN_TENTMAN_DB": uri})
        assert again.returncode == 0
        current = tentman("db", "current", env_extra={"AIRFLOW_CONN_TENTMAN_DB": uri})
        revision = current.stdout.split()[1]
        assert current.stdout.strip() == f"current: {revision}  head: {revision}"
    finally:
        drop_database(pg_admin_uri, name)


def test_version_is_the_package_version():
    from tentman import __version__

    out = tentman("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"tentman {__version__}"


def test_the_production_command_has_no_developer_commands():
    """`tentman dev …` and `tentman demo load` are `tentman-dev`'s: the wheel does not carry them."""
    for command in (("dev", "env"), ("demo", "load")):
        out = tentman(*command)
        assert out.returncode == 2
        assert f"invalid choice: '{command[0]}'" in out.stderr


def test_missing_connection_is_a_clear_error():
    out = tentman("db", "upgrade")
    assert out.returncode == 2
    assert "no Airflow connection 'tentman_db'" in out.stderr and "or set AIRFLOW_CONN_TENTMAN_DB" in out.stderr
