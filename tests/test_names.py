"""The vocabulary of tentman.names against a migrated database: each enum's values are exactly the
CHECK list of the column it names, in order, so the code and the database cannot drift apart."""

from __future__ import annotations

import enum
import re

import pytest
import sqlalchemy as sa

from tentman.names import (
    BILLING_SCHEMA,
    PRORATE_FUNCTION,
    SCHEDULE_CLAIMS_TABLE,
    InvoiceStatus,
    InvoiceType,
    LineType,
    ProrationMethod,
    RunStatus,
    RunType,
)

# The CHECK constraints on one column alone, as PostgreSQL prints them back.
_CHECKS = """
SELECT pg_get_constraintdef(c.oid) AS definition
FROM pg_constraint c
JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
WHERE c.contype = 'c' AND c.conrelid = to_regclass(:table) AND cardinality(c.conkey) = 1 AND a.attname = :column
"""


def check_values(conn, table: str, column: str) -> tuple[str, ...]:
    """The values the column's one CHECK accepts, in the order it lists them."""
    (definition,) = conn.execute(sa.text(_CHECKS), {"table": table, "column": column}).scalars().all()
    # CHECK ((status = ANY (ARRAY['draft'::text, 'issued'::text, ...])))
    return tuple(re.findall(r"'([^']*)'::", definition))


@pytest.mark.parametrize(
    ("table", "column", "vocabulary"),
    [
        ("invoice_runs", "run_type", RunType),
        ("invoice_runs", "status", RunStatus),
        ("invoices", "invoice_type", InvoiceType),
        ("invoices", "status", InvoiceStatus),
        ("invoice_lines", "line_type", LineType),
        (f"{BILLING_SCHEMA}.organization_billing_settings", "proration_method", ProrationMethod),
        (SCHEDULE_CLAIMS_TABLE, "run_type", RunType),
    ],
)
def test_each_enum_is_the_check_list_of_its_column(engine, table, column, vocabulary: type[enum.StrEnum]):
    with engine.connect() as conn:
        assert check_values(conn, table, column) == tuple(member.value for member in vocabulary)


def test_the_proration_function_knows_every_method(engine):
    # Migration 0005 writes the method names into tentman_prorate's body: a method it lacks prorates to NULL.
    with engine.connect() as conn:
        source = conn.execute(
            sa.text("SELECT pg_get_functiondef(CAST(:name AS regproc))"), {"name": PRORATE_FUNCTION}
        ).scalar_one()
    assert set(re.findall(r"method = '([^']*)'", source)) == {method.value for method in ProrationMethod}
