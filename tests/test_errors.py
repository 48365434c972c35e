"""What an operator is told of an error: the driver's sentence, never the statement or its parameters."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tentman.errors import describe_error


def test_a_database_error_is_its_drivers_class_and_first_line_without_sql_or_parameters(engine):
    secret = "tenant@example.test, IBAN DE89 3704 0044 0532 0130 00"
    with engine.connect() as conn, pytest.raises(sa.exc.DBAPIError) as caught:
        conn.execute(sa.text("SELECT CAST(:secret AS integer)"), {"secret": secret})
    assert "[SQL:" in str(caught.value) and secret in str(caught.value)  # what used to be stored
    sentence = describe_error(caught.value)
    assert sentence.startswith("InvalidTextRepresentation: invalid input syntax for type integer")
    assert "SQL" not in sentence and "parameters" not in sentence and "\n" not in sentence
    assert "IBAN" in sentence  # the driver quotes the bad value itself; the statement and its other values are gone


def test_any_other_error_is_its_class_and_first_line_capped():
    assert describe_error(ValueError("bad currency 'X<Y>'\nsecond line")) == "ValueError: bad currency 'X<Y>'"
    long = describe_error(RuntimeError("x" * 1000))
    assert len(long) == 500 and long.endswith("…")
