"""What the rent and utility engines share: results, the per-organization lock, currencies,
and the optional timing of their SQL stages."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

# numeric(12, 2): the largest amount an invoice or line can hold.
MAX_AMOUNT = Decimal("9999999999.99")


class OrganizationNotFound(LookupError):
    pass


class StageTimings:
    """Wall seconds per named stage of one engine call, in the order the stages first ran.

    Passed to an engine by whoever wants to know where the time goes (`make bench`); a stage that
    runs more than once (the write stages, when bad leases are bisected) adds up. Engines called
    without one time nothing (`stage_clock(None)`).
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


class _Untimed:
    """The stage clock of a call nobody measures: one shared, stateless no-op context."""

    _nothing = contextlib.nullcontext()

    def stage(self, name: str) -> AbstractContextManager[None]:
        return self._nothing


_UNTIMED = _Untimed()


def stage_clock(timings: StageTimings | None) -> StageTimings | _Untimed:
    """What an engine times its stages with: the caller's recorder, else the no-op one."""
    return _UNTIMED if timings is None else timings


@dataclass
class OrganizationBillingResult:
    """What billing one organization for one period did (or, for a dry run, would do)."""

    organization_id: int
    total_leases: int = 0
    success_count: int = 0
    skipped_count: int = 0
    failure_count: int = 0
    errors: list[dict] = field(default_factory=list)
    # Set when the organization itself cannot be billed (e.g. its currency is unusable).
    organization_error: str | None = None
    invoices_created: int = 0
    invoices_updated: int = 0
    invoices_unchanged: int = 0
    stale_drafts_removed: int = 0
    statements_billed: int = 0
    amount_billed: Decimal = Decimal("0.00")

    @property
    def status(self) -> str:
        if self.organization_error:
            return "failed"
        return "completed_with_errors" if self.failure_count else "completed"

    def to_dict(self) -> dict:
        return {
            "organization_id": self.organization_id,
            "status": self.status,
            "total_leases": self.total_leases,
            "success_count": self.success_count,
            "skipped_count": self.skipped_count,
            "failure_count": self.failure_count,
            "errors": self.errors,
            "invoices_created": self.invoices_created,
            "invoices_updated": self.invoices_updated,
            "invoices_unchanged": self.invoices_unchanged,
            "stale_drafts_removed": self.stale_drafts_removed,
            "statements_billed": self.statements_billed,
            "amount_billed": str(self.amount_billed),
        }


def lock_organization(conn: Connection, scope: str, organization_id: int) -> None:
    """Serialise work of one organization on one `scope` (an invoice type, its billing settings)
    until the transaction ends.

    Overlapping runs (a manual trigger beside the scheduled run, backfills, a cleared task) then
    take turns per organization instead of racing or deadlocking on the same invoices, while rent
    and utility billing, and different organizations, never wait for each other.
    """
    conn.execute(
        sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
        {"key": f"tentman:{scope}:{organization_id}"},
    )


# The session's temporary buffers, where the staging tables live: 8 MB by default, past which they
# are written to temporary files and read back. At 1,000,000 leases in one organization rent's staging
# tables hold roughly 250 MB of rows, and its write, which reads them, took 26.6 s with 256 MB against 34.3 s
# with the default. PostgreSQL allocates local buffers as they are first used, so billing a small
# organization takes no more memory than before.
STAGING_TEMP_BUFFERS = "256MB"
# SQLSTATE of a setting PostgreSQL refuses (here: temporary buffers, once a session used them).
_INVALID_PARAMETER_VALUE = "22023"


def use_staging_buffers(conn: Connection) -> None:
    """Give this transaction STAGING_TEMP_BUFFERS of temporary buffers, where the session allows it.

    PostgreSQL fixes a session's temporary buffers when it first uses a temporary table, so this must
    come before the staging. A session that used one already, at another size, keeps its own (tried in
    a savepoint); one that ran an engine before has this size already and accepts the setting again.
    """
    try:
        with conn.begin_nested():
            conn.execute(sa.text("SELECT set_config('temp_buffers', :size, true)"), {"size": STAGING_TEMP_BUFFERS})
    except sa.exc.DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != _INVALID_PARAMETER_VALUE:
            raise


def start_organization_billing(
    conn: Connection, invoice_type: str, organization_id: int
) -> tuple[OrganizationBillingResult, str | None]:
    """Take the organization's lock for `invoice_type` and check it can be billed.

    Returns the result to fill in and the invoice currency; the currency is None when the
    organization cannot be billed, and the result then carries the organization-level error.
    """
    use_staging_buffers(conn)
    lock_organization(conn, invoice_type, organization_id)
    result = OrganizationBillingResult(organization_id)
    currency, org_error = organization_currency(conn, organization_id)
    if org_error:
        result.organization_error = org_error
        result.errors.append({"lease_id": None, "error": org_error})
    return result, currency


def organization_currency(conn: Connection, organization_id: int) -> tuple[str | None, str | None]:
    """(currency, error): the organization's invoice currency, or why it cannot be used."""
    row = conn.execute(
        sa.text("SELECT currency FROM organizations WHERE id = :org"), {"org": organization_id}
    ).one_or_none()
    if row is None:
        raise OrganizationNotFound(f"organization {organization_id} does not exist")
    currency = (row.currency or "").strip()
    if len(currency) != 3 or not currency.isalpha() or not currency.isupper():
        return None, (
            f"organization {organization_id} has currency {row.currency!r}; expected a 3-letter "
            "upper-case ISO 4217 code such as 'USD'"
        )
    return currency, None


# Per column, ANALYZE samples 300 rows per unit of this target. The staging tables' plans need their
# row counts, null fractions and distinct counts, which 3,000 rows give; the server's default
# target (100: 30,000 rows) made each ANALYZE take 30 ms at 200,000 staged rows instead of 10 ms.
STAGING_STATISTICS_TARGET = 10


def analyze_staging(table: str, *columns: str) -> tuple[str, str]:
    """The statements that give a staging table statistics on `columns`, from a small sample.

    Only the columns later joined or filtered on (an error column for its null fraction): no plan
    reads the statistics of the other text columns (descriptions), which cost the most to sample.
    """
    sampled = ", ".join(f"ALTER COLUMN {column} SET STATISTICS {STAGING_STATISTICS_TARGET}" for column in columns)
    return f"ALTER TABLE {table} {sampled}", f"ANALYZE {table} ({', '.join(columns)})"


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
                return _rows(conn.execute(sa.text(self.fast), params)), False
        except sa.exc.IntegrityError as exc:
            if getattr(exc.orig, "sqlstate", None) != _UNIQUE_VIOLATION:
                raise
        return _rows(conn.execute(sa.text(self.careful), params)), True


def _rows(result: sa.CursorResult) -> list[sa.Row]:
    return result.all() if result.returns_rows else []


# Errors that belong to the rows being written (SQLSTATE classes 22 "data exception" and 23
# "integrity constraint violation"), as opposed to the connection, a lock or the server.
_ROW_ERRORS = (sa.exc.DataError, sa.exc.IntegrityError)
_FULL_RANGE = (-(2**63), 2**63 - 1)


def write_isolating_bad_leases(
    conn: Connection,
    write_batch: Callable[[int, int], None],
    pending_lease_ids: Callable[[], list[int]],
    record_failure: Callable[[int, str], None],
) -> None:
    """Write all leases at once; if a row error occurs, bisect to the leases at fault.

    `write_batch(lo, hi)` writes the pending leases with ids in [lo, hi] inside a savepoint. On a
    data or integrity error the savepoint is rolled back and the id range is split in halves until
    each failing lease is alone; it is then recorded with `record_failure(lease_id, reason)` and the
    others are written. The common case costs a single savepoint; the ids are only read on failure.
    """
    try:
        with conn.begin_nested():
            write_batch(*_FULL_RANGE)
        return
    except _ROW_ERRORS:
        pass
    pending = [pending_lease_ids()]
    while pending:
        ids = pending.pop()
        if not ids:
            continue
        try:
            with conn.begin_nested():
                write_batch(ids[0], ids[-1])
        except _ROW_ERRORS as exc:
            if len(ids) == 1:
                reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
                record_failure(ids[0], f"unexpected error while billing this lease: {reason}")
            else:
                mid = len(ids) // 2
                pending += [ids[mid:], ids[:mid]]
