"""Preview of a rent run: what it would write, per lease, beside the current draft.

It runs the very engine the DAG runs (`plan_rent_invoices`: `generate_rent_invoices`, as the
`dry_run` path does, and what it planned per lease) on the caller's transaction, after reading the
current drafts under the same organization lock. The caller rolls that transaction back (a UnitOfWork
that is never committed): nothing is written.

A preview never holds billing up (`preview_rent_of_organizations`, what the page runs):

- at most MAX_CONCURRENT_PREVIEWS run at once across every api-server process: each holds a slot, a
  PostgreSQL session advisory lock, for its whole length; one that finds no slot free is refused;
- each organization is previewed in a transaction of its own, named PREVIEW_APPLICATION_NAME, that
  waits at most PREVIEW_LOCK_TIMEOUT_SECONDS for a lock (a run of the organization in progress: refused)
  and whose statements end at the preview's deadline, PREVIEW_TIME_LIMIT_SECONDS after it started;
- a real run that wants the organization's lock ends the preview's session
  (tentman.billing.locking.lock_organization): the preview is refused, saying so.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tentman.billing.leases import LeaseOutcome
from tentman.billing.locking import lock_organization_for_preview
from tentman.billing.organization_settings import billing_settings
from tentman.billing.periods import BillingPeriod
from tentman.billing.rent import PlannedLease, plan_rent_invoices
from tentman.db import UnitOfWork
from tentman.names import PREVIEW_APPLICATION_NAME, InvoiceStatus, InvoiceType, LineType, ProrationMethod

MAX_PREVIEW_LEASES = 500
MAX_CONCURRENT_PREVIEWS = 2
# How long a preview waits for an organization's lock (or a row lock) before it gives up.
PREVIEW_LOCK_TIMEOUT_SECONDS = 2
# How long a whole preview (every organization of it) may take.
PREVIEW_TIME_LIMIT_SECONDS = 60
# When a refused caller may try again: a preview takes seconds, a run of one organization longer.
RETRY_PREVIEW_SLOT_SECONDS = 5
RETRY_BUSY_ORGANIZATION_SECONDS = 30

# SQLSTATEs of the errors a preview's limits end it with.
_LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout
_QUERY_CANCELED = "57014"  # statement_timeout: the deadline
_ADMIN_SHUTDOWN = "57P01"  # pg_terminate_backend: a real run took the organization's lock
# A statement_timeout fires this close to the deadline it was set to (the time of one round trip).
_DEADLINE_SLACK_SECONDS = 1.0

_TRY_SESSION_LOCK = sa.text("SELECT pg_try_advisory_lock(hashtextextended(:key, 0))")
_SESSION_UNLOCK = sa.text("SELECT pg_advisory_unlock(hashtextextended(:key, 0))")


class PreviewRefused(Exception):
    """A preview that cannot run now; the message says why, `retry_after_seconds` when to try again
    (None: not the same request)."""

    retry_after_seconds: int | None = None


class PreviewsBusy(PreviewRefused):
    """Every preview slot is taken."""

    retry_after_seconds = RETRY_PREVIEW_SLOT_SECONDS


class OrganizationBusy(PreviewRefused):
    """The organization's lock (or a row lock) was not free within PREVIEW_LOCK_TIMEOUT_SECONDS."""

    retry_after_seconds = RETRY_BUSY_ORGANIZATION_SECONDS


class PreviewPreempted(PreviewRefused):
    """A real run of the organization ended the preview's session to take the lock."""

    retry_after_seconds = RETRY_BUSY_ORGANIZATION_SECONDS


class PreviewTimedOut(PreviewRefused):
    """The preview reached its deadline."""


def preview_slot_key(slot: int) -> str:
    """The name of preview slot `slot` (1 to MAX_CONCURRENT_PREVIEWS), hashed into its advisory lock."""
    return f"tentman:preview_slot:{slot}"


@contextmanager
def preview_slot(engine: Engine) -> Iterator[int]:
    """Hold one of the MAX_CONCURRENT_PREVIEWS preview slots for the block; PreviewsBusy if none is free.

    A slot is a session advisory lock, so the limit holds across every api-server process and host;
    it is held on a connection of its own outside any transaction, and a process that dies gives its
    slot back with its connection.
    """
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")  # no transaction left open meanwhile
        for slot in range(1, MAX_CONCURRENT_PREVIEWS + 1):
            key = preview_slot_key(slot)
            if conn.execute(_TRY_SESSION_LOCK, {"key": key}).scalar():
                try:
                    yield slot
                finally:
                    try:
                        conn.execute(_SESSION_UNLOCK, {"key": key})
                    except sa.exc.DBAPIError:
                        conn.invalidate()  # its session, and the slot with it, is closed
                return
    raise PreviewsBusy(
        f"previews are limited to {MAX_CONCURRENT_PREVIEWS} at a time and {MAX_CONCURRENT_PREVIEWS} are running; "
        f"try again in {RETRY_PREVIEW_SLOT_SECONDS} seconds"
    )


@contextmanager
def preview_transaction(engine: Engine, organization_id: int, *, deadline: float) -> Iterator[Connection]:
    """A transaction for previewing one organization, never committed (nothing is written).

    Named PREVIEW_APPLICATION_NAME (so a real run ends it rather than wait for it), with the
    preview's lock timeout, and every statement ending by `deadline` (time.monotonic()). The
    errors of those limits are raised as the PreviewRefused that says what happened.
    """
    try:
        with UnitOfWork(
            engine, lock_timeout=f"{PREVIEW_LOCK_TIMEOUT_SECONDS}s", application_name=PREVIEW_APPLICATION_NAME
        ) as uow:
            sa.event.listen(uow.connection, "before_cursor_execute", _ending_by(deadline, organization_id))
            yield uow.connection
    except sa.exc.DBAPIError as exc:
        refusal = _refusal(exc, organization_id, deadline)
        if refusal is None:
            raise
        raise refusal from exc


def preview_rent_of_organizations(
    engine: Engine,
    organization_ids: list[int],
    *,
    period: BillingPeriod,
    proration_method: ProrationMethod | None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict]:
    """Preview each organization's rent run in its own transaction, within the preview's limits (the
    module docstring). `proration_method` None: each organization's own method, as a run without one.

    Raises a PreviewRefused when a limit stops it.
    """
    with preview_slot(engine):
        deadline = time.monotonic() + PREVIEW_TIME_LIMIT_SECONDS
        organizations = []
        for organization_id in organization_ids:
            with preview_transaction(engine, organization_id, deadline=deadline) as conn:
                method = proration_method or billing_settings(conn, organization_id).effective_proration_method
                organizations.append(
                    preview_rent(
                        conn,
                        organization_id=organization_id,
                        period=period,
                        proration_method=method,
                        limit=limit,
                        offset=offset,
                    )
                )
        return organizations


def preview_rent(
    conn: Connection,
    *,
    organization_id: int,
    period: BillingPeriod,
    proration_method: ProrationMethod,
    limit: int = 100,
    offset: int = 0,
) -> dict:
    """The organization's rent run for `period` as it would be now, a page of leases at a time.

    Writes on `conn`'s transaction, which the caller must roll back (`preview_transaction` does).
    """
    limit = max(1, min(limit, MAX_PREVIEW_LEASES))
    lock_organization_for_preview(conn, InvoiceType.RENT, organization_id)
    current_invoices, current_lines = _current_drafts(conn, organization_id, period)
    result, leases = plan_rent_invoices(
        conn,
        organization_id=organization_id,
        period=period,
        proration_method=proration_method,
        limit=limit,
        offset=offset,
    )
    return {
        "organization_id": organization_id,
        "billing_period_start": period.start.isoformat(),
        "billing_period_end": period.end.isoformat(),
        "proration_method": proration_method.value,
        "summary": result.to_dict(),
        "limit": limit,
        "offset": offset,
        "leases": [
            _lease_preview(
                lease,
                current_invoices.get(lease.lease_id),
                current_lines.get(lease.lease_id, []),
                [_line(line) for line in lease.lines],
            )
            for lease in leases
        ],
    }


def _ending_by(deadline: float, organization_id: int):
    """A before_cursor_execute hook: the statement's timeout is what is left until `deadline`, and
    no statement starts after it.

    PostgreSQL before 17 has no timeout for a whole transaction; one statement_timeout set at its
    start would allow each statement that much again.
    """

    def set_statement_timeout(conn, cursor, statement, parameters, context, executemany):
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:  # (a statement_timeout of 0 would mean none)
            raise _timed_out(organization_id)
        cursor.execute(f"SET LOCAL statement_timeout = {left_ms}")

    return set_statement_timeout


def _refusal(exc: sa.exc.DBAPIError, organization_id: int, deadline: float) -> PreviewRefused | None:
    """The PreviewRefused a database error of a preview's limits means; None for any other error."""
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate == _ADMIN_SHUTDOWN:
        return PreviewPreempted(
            f"the preview of organization {organization_id} was stopped: a real billing run of it started, and "
            f"real runs take precedence over previews; try again when the run ends"
        )
    if sqlstate == _LOCK_NOT_AVAILABLE:
        return OrganizationBusy(
            f"a billing run of organization {organization_id} is in progress (the preview waited "
            f"{PREVIEW_LOCK_TIMEOUT_SECONDS} s for it to release the organization's invoices); try again when it ends"
        )
    # A statement cancelled well before the deadline was cancelled by someone (pg_cancel_backend): not ours.
    if sqlstate == _QUERY_CANCELED and deadline - time.monotonic() < _DEADLINE_SLACK_SECONDS:
        return _timed_out(organization_id)
    return None


def _timed_out(organization_id: int) -> PreviewTimedOut:
    return PreviewTimedOut(
        f"the preview reached its time limit of {PREVIEW_TIME_LIMIT_SECONDS} s at organization {organization_id}; "
        "preview fewer organizations at once, or a smaller page of leases"
    )


def _line(line) -> dict:
    """A line as the page shows it: a current one (a row) or a planned one."""
    return {
        "line_type": line.line_type,
        "source_id": line.source_id,
        "description": line.description,
        "service_period_start": line.service_period_start.isoformat() if line.service_period_start else None,
        "service_period_end": line.service_period_end.isoformat() if line.service_period_end else None,
        "amount": str(line.amount),
    }


def _current_drafts(conn: Connection, organization_id: int, period: BillingPeriod) -> tuple[dict, dict]:
    """The organization's rent invoices of the period as they are now: {lease: invoice}, {lease: lines}."""
    invoices, lines = {}, defaultdict(list)
    for row in conn.execute(
        sa.text(
            """
            SELECT i.lease_id, i.id AS invoice_id, i.status, i.total, l.line_type, l.source_id,
                   l.description, l.service_period_start, l.service_period_end, l.amount
            FROM invoices i LEFT JOIN invoice_lines l ON l.invoice_id = i.id
            WHERE i.organization_id = :organization_id AND i.invoice_type = :invoice_type
              AND i.billing_period_start = :period_start
            ORDER BY i.lease_id, l.line_type DESC, l.source_id
            """
        ),
        {"organization_id": organization_id, "invoice_type": InvoiceType.RENT, "period_start": period.start},
    ):
        invoices[row.lease_id] = {"invoice_id": row.invoice_id, "status": row.status, "total": str(row.total)}
        if row.line_type is not None:
            lines[row.lease_id].append(_line(row))
    return invoices, lines


def _lease_preview(lease: PlannedLease, before: dict | None, before_lines: list[dict], after_lines: list[dict]) -> dict:
    """One lease of the preview: its new lines and total beside the current draft, and the changes."""
    skipped = before is not None and before["status"] != InvoiceStatus.DRAFT
    unchanged_by_run = bool(lease.error) or skipped
    new_total = None if unchanged_by_run else str(lease.total if lease.total is not None else Decimal("0.00"))
    if new_total is not None and before is not None:
        difference = str(Decimal(new_total) - Decimal(before["total"]))
    else:
        difference = new_total
    return {
        "lease_id": lease.lease_id,
        "unit_label": lease.unit_label,
        "outcome": (LeaseOutcome.FAILED if lease.error else (lease.outcome or LeaseOutcome.SKIPPED)).value,
        "error": lease.error,
        "lines": [] if unchanged_by_run else after_lines,
        "total": new_total,
        "current": before,
        "current_lines": before_lines,
        "changes": [] if unchanged_by_run else _changes(before_lines, after_lines),
        "difference": difference,
    }


def _changes(before: list[dict], after: list[dict]) -> list[dict]:
    """Lines added, removed or changed between the current draft and the preview."""
    old = {(line["line_type"], line["source_id"]): line for line in before}
    new = {(line["line_type"], line["source_id"]): line for line in after}
    changes = []
    for key in sorted(old.keys() | new.keys(), key=lambda k: (k[0] != LineType.RENT, k[0], k[1])):
        if key not in old:
            changes.append({"change": "added", **new[key]})
        elif key not in new:
            changes.append({"change": "removed", **old[key]})
        elif old[key] != new[key]:
            changes.append({"change": "changed", **new[key], "previous_amount": old[key]["amount"]})
    return changes
