"""Database access: engines for the TentMan database from a URI, and the unit of work.

The engine for the Airflow connection `tentman_db` is built in tentman.orchestration.connection.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from urllib.parse import parse_qsl, unquote, urlsplit

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.sql.compiler import BIND_PARAMS, BIND_PARAMS_ESC

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
            execute(self.connection, "SET TRANSACTION READ ONLY")
        for name, value in self._settings.items():
            if value is not None:
                # set_config(..., true) is SET LOCAL with a bound value: it ends with the transaction.
                execute(self.connection, "SELECT set_config(:name, :value, true)", {"name": name, "value": value})
        return self

    def commit(self) -> None:
        self._transaction.commit()

    def __exit__(self, *exc_info) -> None:
        try:
            if self._transaction.is_active:
                self._transaction.rollback()
        finally:
            self.connection.close()


def execute(conn: Connection, sql: str, params: Mapping[str, object] | None = None) -> sa.Result:
    """Run `sql` (SQL text with `:name` binds, as sa.text reads it) with `params` on `conn`'s
    transaction; its result is SQLAlchemy's (`one`, `all`, `scalars`, `rowcount`, ...).

    On psycopg's own cursor: SQLAlchemy's execution of a text statement costs about 0.15 ms of Python
    more (its cache key, compiled form, parameter types, result metadata), and an organization task
    runs some thirty statements, its reconciliation twenty per organization (docs/scaling.md, "What
    a task process spends, profiled"). Through SQLAlchemy instead when something listens to the
    connection's statements (the preview's deadline per statement, a test that looks at them), so
    that it sees each one. Either way the same SQL with the same parameters, errors raised as
    SQLAlchemy's (sa.exc.IntegrityError, DataError, ...), and a transaction begun as SQLAlchemy
    begins one.
    """
    if conn.dispatch.before_cursor_execute or conn.dispatch.after_cursor_execute:
        return conn.execute(sa.text(sql), params or {})
    if not conn.in_transaction():
        conn.begin()  # what SQLAlchemy's own execution does first (autobegin)
    driver_connection = conn.connection.driver_connection
    try:
        with driver_connection.cursor() as cursor:
            # Always with parameters, even none: the compiled text has its % doubled.
            cursor.execute(_driver_sql(sql), params or {})
            return DriverResult(cursor)
    except psycopg.Error as exc:
        invalidated = conn.dialect.is_disconnect(exc, driver_connection, None)
        if invalidated:
            conn.invalidate(exc)
        raise sa.exc.DBAPIError.instance(
            sql, params, exc, psycopg.Error, connection_invalidated=invalidated, dialect=conn.dialect
        ) from exc


@functools.lru_cache(maxsize=1024)
def _driver_sql(sql: str) -> str:
    """`sql` as psycopg takes it: `%` doubled, `%(name)s` binds, `\\:` un-escaped — what SQLAlchemy's
    compiler makes of sa.text(sql) for psycopg, without it: compiling a text through SQLAlchemy took
    about 0.15 ms, paid for every statement of each task process (a fresh fork whose cache is empty)."""
    # SQLAlchemy's own patterns (sa.text's binds, the compiler's `\\:` escape), so that a text reads the
    # same here as through SQLAlchemy (tests/test_db.py compares the two on every engine statement).
    return BIND_PARAMS_ESC.sub(r"\1", BIND_PARAMS.sub(r"%(\1)s", sql.replace("%", "%%")))


class DriverResult(IteratorResult):
    """A statement's result read from psycopg's cursor at once: SQLAlchemy's own result over its rows
    (the same Row objects and `one`, `all`, `scalars`, ... as on the SQLAlchemy path), with the
    cursor's `rowcount` and `returns_rows` as CursorResult has them."""

    def __init__(self, cursor: psycopg.Cursor):
        self.rowcount = cursor.rowcount
        description = cursor.description  # built anew (a Column per column) on each read
        self.returns_rows = description is not None
        columns = tuple(column.name for column in description) if self.returns_rows else ()
        super().__init__(_result_metadata(columns), iter(cursor.fetchall() if self.returns_rows else ()))


@functools.lru_cache(maxsize=1024)
def _result_metadata(columns: tuple[str, ...]) -> SimpleResultMetaData:
    return SimpleResultMetaData(columns)
