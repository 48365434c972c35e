"""How an error is told to an operator: a sentence, no statement, no parameters. Standard library only."""

from __future__ import annotations


def describe_error(exc: BaseException, limit: int = 500) -> str:
    """An operator's sentence for an error: its class and the first line of its message. For a
    database error, the driver's class and message: SQLAlchemy appends the statement and its
    parameters (tenants' data) to its own text, and that text reaches the page, the API and the
    alerts through `invoice_runs.errors`. The full error stays in the task's log."""
    driver_error = getattr(exc, "orig", None)  # sqlalchemy.exc.DBAPIError wraps psycopg's error
    source = driver_error if isinstance(driver_error, BaseException) else exc
    lines = str(source).strip().splitlines()
    sentence = f"{type(source).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return sentence if len(sentence) <= limit else sentence[: limit - 1] + "…"
