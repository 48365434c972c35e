"""Database access: engines for the TentMan database from a URI, and the unit of work.

The engine for the Airflow connection `tentman_db` is built in tentman.orchestration.connection.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from tentman.settings import tentman_database_uri

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


class UnitOfWork:
    """One transaction on a connection of its own, rolled back on exit unless `commit()` was called.

    The three shapes TentMan's code needs: bill and commit (call `commit()` at the end); compute and
    roll back (a dry run or a preview: never call it); read only with a statement timeout (the
    page's queries). An exception inside the block rolls everything back.

    `statement_timeout`, `lock_timeout` (PostgreSQL durations such as "2s") and `application_name`
    hold for this transaction only.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        read_only: bool = False,
        statement_timeout: str | None = None,
        lock_timeout: str | None = None,
        application_name: str | None = None,
    ):
        self._engine = engine
        self._read_only = read_only
        self._settings = {
            "statement_timeout": statement_timeout,
            "lock_timeout": lock_timeout,
            "application_name": application_name,
        }

    def __enter__(self) -> UnitOfWork:
        self.connection = self._engine.connect()
        self._transaction = self.connection.begin()
        if self._read_only:
            self.connection.execute(sa.text("SET TRANSACTION READ ONLY"))
        for name, value in self._settings.items():
            if value is not None:
                # set_config(..., true) is SET LOCAL with a bound value: it ends with the transaction.
                self.connection.execute(
                    sa.text("SELECT set_config(:name, :value, true)"), {"name": name, "value": value}
                )
        return self

    def commit(self) -> None:
        self._transaction.commit()

    def __exit__(self, *exc_info) -> None:
        try:
            if self._transaction.is_active:
                self._transaction.rollback()
        finally:
            self.connection.close()
