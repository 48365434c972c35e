"""The engines' temporary staging tables and how they write from them: the session's temporary
buffers, small-sample statistics, INSERTs tried without ON CONFLICT first, and a write that
isolates the leases at fault."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tentman.db import execute

# The session's temporary buffers, where the staging tables live: 8 MB by default, past which they
# are written to temporary files and read back. At 1,000,000 leases in one organization rent's staging
# tables hold roughly 250 MB of rows, and its write, which reads them, took 26.6 s with 256 MB against 34.3 s
# with the default. PostgreSQL allocates local buffers as they are first used, so billing a small
# organization takes no more memory than before.
STAGING_TEMP_BUFFERS = "256MB"
# SQLSTATE of a setting PostgreSQL refuses (here: temporary buffers, once a session used them).
_INVALID_PARAMETER_VALUE = "22023"


def use_staging_settings(conn: Connection) -> None:
    """This transaction's settings for staging tables, set before the first one is created.

    - Their statistics sampled at STAGING_STATISTICS_TARGET by analyze_staging: the transaction's
      `default_statistics_target`, so that every ANALYZE of the transaction samples that little
      (only staging tables are analyzed in it).
    - STAGING_TEMP_BUFFERS of temporary buffers, where the session allows it. PostgreSQL fixes a
      session's temporary buffers when it first uses a temporary table, so this must come before the
      staging. They are set for the session, not the transaction: a session that has them already
      (one that staged before: the reconciliation, which stages once per organization on one
      connection) pays one statement, not four. A session that used a temporary table at another
      size keeps its own (tried in a savepoint).
    """
    buffers = (
        execute(
            conn,
            "SELECT set_config('default_statistics_target', :target, true), current_setting('temp_buffers') AS buffers",
            {"target": str(STAGING_STATISTICS_TARGET)},
        )
        .one()
        .buffers
    )
    if buffers == STAGING_TEMP_BUFFERS:
        return
    try:
        with conn.begin_nested():
            execute(conn, "SELECT set_config('temp_buffers', :size, false)", {"size": STAGING_TEMP_BUFFERS})
    except sa.exc.DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != _INVALID_PARAMETER_VALUE:
            raise


# Per column, ANALYZE samples 300 rows per unit of this target. The staging tables' plans need their
# row counts, null fractions and distinct counts, which 3,000 rows give; the server's default
# target (100: 30,000 rows) made each ANALYZE take 30 ms at 200,000 staged rows instead of 10 ms.
STAGING_STATISTICS_TARGET = 10


def analyze_staging(table: str, *columns: str) -> str:
    """The statement that gives a staging table statistics on `columns`, from a small sample (the
    transaction's target, use_staging_settings).

    Only the columns later joined or filtered on (an error column for its null fraction): no plan
    reads the statistics of the other text columns (descriptions), which cost the most to sample.
    """
    return f"ANALYZE {table} ({', '.join(columns)})"


# SQLSTATE of a unique key violation.
_UNIQUE_VIOLATION = "23505"


@dataclass(frozen=True)
class InsertFast:
    """A write statement tried as plain INSERTs first, and run again with ON CONFLICT if need be.

    `fast` is the statement without ON CONFLICT: under the organization's lock, the engine's staging
    already knows which rows are new, so the database's per-row conflict handling is paid for nothing
    (a probe of the unique index before each insertion and a WAL record confirming it; about a tenth
    of an insert's time). Only a writer that does not take our lock (the TentMan application) can
    add a conflicting row meanwhile: the fast statement then fails on the unique key, its savepoint
    is rolled back, and `careful` (the same statement with ON CONFLICT) runs instead.
    """

    fast: str
    careful: str

    def execute(self, conn: Connection, params: dict) -> tuple[list[sa.Row], bool]:
        """Run the write: the rows it returns (if any), and whether it had to run `careful`."""
        try:
            with conn.begin_nested():
                return _rows(execute(conn, self.fast, params)), False
        except sa.exc.IntegrityError as exc:
            if getattr(exc.orig, "sqlstate", None) != _UNIQUE_VIOLATION:
                raise
        return _rows(execute(conn, self.careful, params)), True


def _rows(result: sa.CursorResult) -> list[sa.Row]:
    return result.all() if result.returns_rows else []


# Errors that belong to the rows being written (SQLSTATE classes 22 "data exception" and 23
# "integrity constraint violation"), as opposed to the connection, a lock or the server.
_ROW_ERRORS = (sa.exc.DataError, sa.exc.IntegrityError)
_FULL_RANGE = (-(2**63), 2**63 - 1)


def write_isolating_bad_leases(
    conn: Connection,
    write_batch: Callable[[int, int], Counter[str]],
    pending_lease_ids: Callable[[], list[int]],
    record_failure: Callable[[int, str], None],
) -> Counter[str]:
    """Write all leases at once; if a row error occurs, bisect to the leases at fault.

    `write_batch(first, last)` writes the pending leases with ids in [first, last] inside a savepoint
    and returns what it counted. On a data or integrity error the savepoint is rolled back and the id
    range is split in halves until each failing lease is alone; it is then recorded with
    `record_failure(lease_id, reason)` and the others are written. Returns the counts of the batches
    written. The common case costs a single savepoint; the ids are only read on failure.
    """
    try:
        with conn.begin_nested():
            return write_batch(*_FULL_RANGE)
    except _ROW_ERRORS:
        pass
    written: Counter[str] = Counter()
    pending = [pending_lease_ids()]
    while pending:
        ids = pending.pop()
        if not ids:
            continue
        try:
            with conn.begin_nested():
                counted = write_batch(ids[0], ids[-1])
            written.update(counted)
        except _ROW_ERRORS as exc:
            if len(ids) == 1:
                reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
                record_failure(ids[0], f"unexpected error while billing this lease: {reason}")
            else:
                mid = len(ids) // 2
                pending += [ids[mid:], ids[:mid]]
    return written
