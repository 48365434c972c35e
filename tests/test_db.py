"""tentman.db.execute: statements run on psycopg's cursor read exactly as SQLAlchemy's execution reads
them (rows, values and their types, errors, transactions), and through SQLAlchemy when a listener
watches the connection's statements."""

import datetime
from datetime import UTC, date
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

from support.factories import add_charge, add_lease, add_organization, add_statement
from support.steps import run_steps
from tentman import db
from tentman.db import DriverResult, execute
from tentman.names import RunStatus, RunType

# A modulo, a literal percent sign, a `::` cast, numeric, date, array and enum parameters, two
# columns of the same name.
SQL = """
    SELECT CAST(:amount AS numeric(12, 2)) * 2 AS doubled, 7 % :three AS remainder, '100%' AS literal,
           '2026-03-01'::date + :days AS due, cardinality(CAST(:ids AS bigint[])) AS n, CAST(:status AS text) AS status,
           1 AS same, 2 AS same
    FROM generate_series(1, :rows) g
"""
PARAMS = {"amount": Decimal("10.05"), "three": 3, "days": 30, "ids": [4, 5, 6], "status": RunStatus.COMPLETED}


def test_rows_are_read_as_sqlalchemy_reads_them(engine):
    with engine.connect() as conn:
        fast = execute(conn, SQL, {**PARAMS, "rows": 2})
        assert isinstance(fast, DriverResult)  # nothing listens: on the driver
        slow = conn.execute(sa.text(SQL), {**PARAMS, "rows": 2})
        fast_rows, slow_rows = fast.all(), slow.all()
    assert [tuple(r) for r in fast_rows] == [tuple(r) for r in slow_rows]
    row = fast_rows[0]
    assert (row.doubled, row.remainder, row.literal, row.due, row.n, row.status) == (
        Decimal("20.10"),
        1,
        "100%",
        datetime.date(2026, 3, 31),
        3,
        "completed",
    )
    assert type(row.doubled) is Decimal
    assert row._asdict() == dict(row._mapping)
    assert row[6:] == (1, 2)  # both values of the repeated name kept


def test_one_first_scalars_and_rowcount(engine):
    with engine.connect() as conn:
        assert execute(conn, SQL, {**PARAMS, "rows": 1}).one().n == 3
        assert execute(conn, SQL, {**PARAMS, "rows": 0}).one_or_none() is None
        assert execute(conn, SQL, {**PARAMS, "rows": 0}).first() is None
        assert execute(conn, "SELECT g FROM generate_series(1, 3) g").scalars().all() == [1, 2, 3]
        assert execute(conn, "SELECT 5").scalar_one() == 5
        assert tuple(execute(conn, "SELECT '100%' AS a, 7 % 3 AS b").one()) == ("100%", 1)  # no parameters
        with pytest.raises(sa.exc.NoResultFound):
            execute(conn, SQL, {**PARAMS, "rows": 0}).one()
        with pytest.raises(sa.exc.MultipleResultsFound):
            execute(conn, SQL, {**PARAMS, "rows": 2}).one_or_none()
        execute(conn, "CREATE TEMP TABLE t (id int PRIMARY KEY)")
        written = execute(conn, "INSERT INTO t SELECT g FROM generate_series(1, :n) g", {"n": 4})
        assert (written.returns_rows, written.rowcount) == (False, 4)


def test_a_driver_error_is_raised_as_sqlalchemys_and_a_savepoint_recovers(engine):
    with engine.connect() as conn:
        execute(conn, "CREATE TEMP TABLE t (id int PRIMARY KEY)")
        execute(conn, "INSERT INTO t VALUES (1)")
        with pytest.raises(sa.exc.IntegrityError) as raised:
            with conn.begin_nested():
                execute(conn, "INSERT INTO t VALUES (:id)", {"id": 1})
        assert raised.value.orig.sqlstate == "23505"
        assert "INSERT INTO t VALUES (:id)" in str(raised.value)
        # The savepoint was rolled back: the transaction goes on.
        assert execute(conn, "SELECT count(*) FROM t").scalar() == 1
        with pytest.raises(sa.exc.DataError):
            execute(conn, "SELECT CAST(:n AS int)", {"n": "not a number"})


def test_a_transaction_begun_by_execute_commits_as_sqlalchemys(engine):
    with engine.connect() as conn:
        execute(conn, "CREATE TABLE kept (id int)")
        assert conn.in_transaction()
        conn.commit()
    with engine.connect() as conn:
        execute(conn, "INSERT INTO kept VALUES (1)")
        # closed without a commit: rolled back
    with engine.connect() as conn:
        assert execute(conn, "SELECT count(*) FROM kept").scalar() == 0


def test_a_listener_on_the_statements_sees_each_one(engine):
    """The preview's deadline per statement is such a listener: the statements go through SQLAlchemy."""
    seen = []
    with engine.connect() as conn:
        sa.event.listen(conn, "before_cursor_execute", lambda c, cursor, statement, *rest: seen.append(statement))
        result = execute(conn, SQL, {**PARAMS, "rows": 1})
        assert result.one().n == 3
    assert not isinstance(result, DriverResult)
    assert len(seen) == 1 and "generate_series" in seen[0]


def test_every_statement_of_a_run_reads_on_the_driver_as_sqlalchemy_compiles_it(engine, monkeypatch):
    """_driver_sql rewrites the binds itself instead of compiling through SQLAlchemy: on every text a
    rent run and a utility run execute (billing, invoice_runs, reconciliation), the same SQL as
    SQLAlchemy's compiler gives psycopg."""
    texts = set()
    convert = db._driver_sql.__wrapped__

    def recorded(sql):
        texts.add(sql)
        return convert(sql)

    monkeypatch.setattr(db, "_driver_sql", recorded)
    with engine.begin() as conn:
        org = add_organization(conn, "Compiled Homes")
        lease = add_lease(conn, org, date(2026, 12, 10), None, "1200.00")  # prorated: starts mid-month
        add_charge(conn, lease, "45.00")
        add_statement(conn, org, lease, "31.40")
    run_steps(engine, RunType.MONTHLY_RENT, datetime.datetime(2026, 11, 26, 2, tzinfo=UTC), "rent")
    run_steps(engine, RunType.UTILITY, datetime.datetime(2026, 12, 7, 3, tzinfo=UTC), "utility")
    dialect = PGDialect_psycopg()
    assert len(texts) > 40
    for sql in texts:
        assert convert(sql) == str(sa.text(sql).compile(dialect=dialect)), sql


@pytest.mark.parametrize(
    "sql",
    ["x::int = :a", "7 % :b", "'100%' || '%(x)s'", r"\:not_a_bind, :bind", "a:=1, :x:, :é", ":a:b", "(:a)"],
)
def test_a_text_reads_on_the_driver_as_sqlalchemy_compiles_it(sql):
    assert db._driver_sql.__wrapped__(sql) == str(sa.text(sql).compile(dialect=PGDialect_psycopg()))
