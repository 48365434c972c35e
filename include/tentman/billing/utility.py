"""Utility billing engine: bill every finalized, not yet invoiced utility statement exactly once.

For one organization and billing period [period_start, period_end]:
- pending statements are finalized, not linked to an invoice line, and end by period_end —
  statements of earlier months finalized late are billed too; the lease's status does not matter;
- each lease with pending statements gets its draft utility invoice for the period (created if
  missing) with one utility line per statement, and each statement is linked to its line in the
  same statement that writes the line;
- a non-draft invoice leaves the statements pending for the next run (lease skipped, reason
  recorded); bad statements are recorded and left pending; the rest is billed.

Exactly once is enforced by the database: a unique index on utility lines' `source_id` means a
statement can be on one invoice line only, whatever runs overlap. Set-based like the rent engine.
"""

from __future__ import annotations

from collections import Counter
from datetime import date, timedelta

from sqlalchemy.engine import Connection

from tentman.application_schema import MAX_AMOUNT
from tentman.billing.leases import OUTCOME_BINDS, LeaseOutcome
from tentman.billing.periods import BillingPeriod
from tentman.billing.results import OrganizationBillingResult
from tentman.billing.staged_run import StagedRun
from tentman.billing.staging import InsertFast, analyze_staging
from tentman.billing.timing import StageClock, StageTimings, stage_clock
from tentman.db import execute
from tentman.names import InvoiceStatus, InvoiceType, LineType, StatementStatus

# The vocabulary the statements below read, bound by these names.
_VOCABULARY = {
    "utility_invoice": InvoiceType.UTILITY.value,
    "draft": InvoiceStatus.DRAFT.value,
    "utility_line": LineType.UTILITY.value,
    **OUTCOME_BINDS,
}
# Written into the SQL rather than bound: the partial indexes on utility lines and on pending
# statements are used (and ON CONFLICT infers the first) only where the planner sees these values.
_UTILITY_LINE = f"line_type = '{LineType.UTILITY}'"
_FINALIZED = f"status = '{StatementStatus.FINALIZED}'"


class ConcurrentStatementChange(RuntimeError):
    """A statement changed under the run (e.g. un-finalized by the app): retry the organization."""


def generate_utility_invoices(
    conn: Connection,
    *,
    organization_id: int,
    period: BillingPeriod,
    invoice_run_id: int | None,
    due_date: date | None = None,
    timings: StageTimings | None = None,
) -> OrganizationBillingResult:
    """Bill the organization's pending utility statements onto draft utility invoices for `period`.

    Runs on the caller's transaction and takes the organization's utility lock (never the rent
    one: rent and utility runs do not wait for each other). `timings`, when given, receives the
    seconds of each stage (UTILITY_STAGES).
    """
    params = {
        "organization_id": organization_id,
        "period_start": period.start,
        "period_end": period.end,
        "billing_month": period.label,
        "due_date": due_date or period.end,
        "invoice_run_id": invoice_run_id,
        "max_amount": MAX_AMOUNT,
        **_VOCABULARY,
    }
    result, written = _UTILITY.bill(conn, organization_id, params, stage_clock(timings))
    result.statements_billed = written["statements_billed"]
    return result


def _write_batch(conn: Connection, params: dict, clock: StageClock) -> Counter[str]:
    """Bill the batch's pending statements (StagedRun.write_batch); counts the statements billed."""
    with clock.stage("bill_statements"):
        (billed,), another_writer_billed = _BILL.execute(conn, params)
    if billed.lines != billed.linked:
        raise ConcurrentStatementChange(
            f"{billed.lines - billed.linked} utility statements of organization {params['organization_id']} "
            "changed while they were being billed; nothing was written, the organization will be retried"
        )
    # A new invoice's total is its staged statements' sum, unless another writer billed one of
    # them meanwhile (its line was skipped): then the new invoices are recomputed from their lines too.
    recompute = [LeaseOutcome.CREATED, LeaseOutcome.UPDATED] if another_writer_billed else [LeaseOutcome.UPDATED]
    with clock.stage("recompute_totals"):
        execute(conn, _RECOMPUTE_TOTALS, {**params, "outcomes": [outcome.value for outcome in recompute]})
    return Counter(statements_billed=billed.lines)


# The utility engine's rule for a bad statement, stated once: why statement `s` cannot be billed,
# with `l` its lease (LEFT JOINed on l.id = s.lease_id), or null when it can. The engine stages it
# (_STAGE_PENDING); the reconciliation after each run (tentman.billing.reconciliation) excuses with
# it a pending statement whose lease the run's errors name.
UTILITY_STATEMENT_ERROR = """
CASE
    WHEN s.lease_id IS NULL OR l.id IS NULL
        THEN format('utility statement %s names lease %s, which does not exist',
                    s.id, coalesce(s.lease_id::text, 'null'))
    WHEN l.organization_id IS DISTINCT FROM s.organization_id
        THEN format('utility statement %s names lease %s, which belongs to another organization',
                    s.id, s.lease_id)
    WHEN s.amount IS NULL THEN format('utility statement %s of lease %s has no amount', s.id, s.lease_id)
    WHEN s.period_start IS NULL OR s.period_end IS NULL
        THEN format('utility statement %s of lease %s has no service period', s.id, s.lease_id)
    WHEN s.period_end < s.period_start
        THEN format('utility statement %s of lease %s: period_end %s is before its period_start %s',
                    s.id, s.lease_id, s.period_end, s.period_start)
END
"""

# The organization's pending statements: finalized, not linked to an invoice line, ending by the period.
_PENDING = f"""s.organization_id = :organization_id
  AND s.{_FINALIZED}
  AND s.invoice_line_id IS NULL
  AND (s.period_end <= :period_end OR s.period_end IS NULL)"""

# A pending statement that already has a utility line (its link lost, e.g. restored from a backup)
# is linked back to that line instead of being billed a second time. Run before the staging, which
# then no longer finds it pending.
_RELINK_BILLED = f"""
UPDATE utility_statements s
SET invoice_line_id = existing.id
FROM invoice_lines existing
WHERE existing.{_UTILITY_LINE} AND existing.source_id = s.id
  AND {_PENDING}
"""

# The organization's pending statements, each with the reason it cannot be billed (null = ok).
_STAGE_PENDING = f"""
CREATE TEMP TABLE tm_util_stmt ON COMMIT DROP AS
SELECT s.id AS statement_id,
       s.lease_id,
       s.utility_type, s.period_start, s.period_end, s.amount,
       {UTILITY_STATEMENT_ERROR} AS error
FROM utility_statements s
LEFT JOIN leases l ON l.id = s.lease_id
WHERE {_PENDING}
"""

# Per lease with pending statements (a statement without a lease counts as one on its own): what its good
# statements add up to, its invoice for the period and the total it would reach. A lease whose
# statements are all bad is staged as failed, so the counts read this table alone. The invoice is
# looked up for good statements only (those name a lease of this organization); there is at most
# one per lease, type and period, so max() picks it.
# Each lease is staged with the outcome the write gives it (created: a new invoice; updated: its
# draft), so that the write need not record it for every lease: the write records it only where the
# database disagrees (an invoice issued or drafted meanwhile), and a lease it fails is marked failed.
_STAGE_LEASES = """
CREATE TEMP TABLE tm_util_lease ON COMMIT DROP AS
SELECT t.lease_id,
       sum(t.amount) FILTER (WHERE t.error IS NULL) AS new_amount,
       max(i.id) AS invoice_id,
       max(i.status) AS invoice_status,
       coalesce(max(i.total), 0) + sum(t.amount) FILTER (WHERE t.error IS NULL) AS new_total,
       CASE
           WHEN bool_and(t.error IS NOT NULL) THEN :failed
           WHEN max(i.status) <> :draft THEN :skipped
           WHEN max(i.id) IS NULL THEN :created
           ELSE :updated
       END AS outcome,
       NULL::text AS error
FROM tm_util_stmt t
LEFT JOIN invoices i
       ON t.error IS NULL AND i.lease_id = t.lease_id AND i.invoice_type = :utility_invoice
      AND i.billing_period_start = :period_start
GROUP BY t.lease_id, CASE WHEN t.lease_id IS NULL THEN t.statement_id END
"""

# `abs(new_total) > :max_amount` written as two comparisons: the planner estimates those from
# the column's statistics (none match), while for abs() it assumes a third of the leases, prices
# the per-lease subquery for each, and on a server with JIT compiles the statement (0.3 s seen).
_FLAG_LEASE_PROBLEMS = """
UPDATE tm_util_lease l
SET error = CASE
        WHEN l.outcome = :skipped
            THEN format('utility invoice %s of lease %s for %s is %s; its statements %s stay pending for the next run',
                        l.invoice_id, l.lease_id, CAST(:billing_month AS text), l.invoice_status,
                        (SELECT string_agg(t.statement_id::text, ', ' ORDER BY t.statement_id)
                         FROM tm_util_stmt t WHERE t.lease_id = l.lease_id AND t.error IS NULL))
        ELSE format('utility invoice of lease %s would total %s, more than an invoice can hold (%s); '
                    'its statements stay pending', l.lease_id, l.new_total, CAST(:max_amount AS numeric))
    END,
    outcome = CASE WHEN l.outcome = :skipped THEN :skipped ELSE :failed END
WHERE l.outcome = :skipped OR l.new_total > :max_amount OR l.new_total < -CAST(:max_amount AS numeric)
"""

# The staging stages, by the name their time is reported under (StageTimings). Staging tables are
# analyzed (analyze_staging) so the next statements are planned for their real size.
_STAGES = (
    ("relink_billed", (_RELINK_BILLED,)),
    ("stage_pending", (_STAGE_PENDING, analyze_staging("tm_util_stmt", "statement_id", "lease_id", "error"))),
    (
        "stage_leases",
        (_STAGE_LEASES, analyze_staging("tm_util_lease", "lease_id", "invoice_id", "outcome", "new_total")),
    ),
    ("flag_lease_problems", (_FLAG_LEASE_PROBLEMS,)),
)

# One statement of chained data-modifying CTEs, so invoices, lines and links are written together:
# 1. `invoice` — each lease's draft utility invoice for the period. A lease without one when staged
#    gets it inserted (`new_invoice`) with the new statements' amount as its total. A lease whose
#    invoice exists (`existing_invoice`) has it locked and touched by ON CONFLICT DO UPDATE (its
#    total is recomputed by _RECOMPUTE_TOTALS afterwards); a non-draft invoice fails the DO UPDATE's
#    WHERE and is not returned: its lease is handled as issued. `xmax = 0` tells the two apart: a
#    freshly inserted row version has no locking transaction, while the version an ON CONFLICT DO
#    UPDATE writes keeps the row lock ON CONFLICT took, so its xmax is our transaction (a PostgreSQL
#    detail; the engine tests count created vs updated).
# 2. `marked_existing` (and, when not every new invoice may have been inserted, `marked_new`) —
#    record what the invoice's upsert did where it may differ from the staged outcome: a draft
#    deleted meanwhile is created again, one drafted meanwhile for a lease staged without is updated.
#    `issued` — a lease whose invoice was not returned (issued by the application between staging
#    and writing) is skipped, its statements left pending.
# 3. `line` — one invoice line per statement. ON CONFLICT on the once-per-statement unique index
#    skips a statement another writer billed meanwhile: it is never billed twice.
# 4. `linked` — points each statement at its new line, if it is still finalized and unlinked.
# The CTEs pass rows on only through RETURNING: each reads the tables as they were before the
# statement. Hence the two counts at the end: lines written and statements linked must be equal,
# or a statement changed under the run (the caller then retries the organization).
# The statement is first run as plain INSERTs where it may (new invoices and lines without ON
# CONFLICT, see InsertFast): only a writer that does not take our lock can make those conflict, and
# the statement then runs again with both ON CONFLICT clauses.
_BILL_STATEMENTS = """
WITH new_invoice AS (
    {new_invoice}
), existing_invoice AS (
    {existing_invoice}
), invoice AS (
    SELECT * FROM new_invoice UNION ALL SELECT * FROM existing_invoice
){mark_new}, marked_existing AS (
    {mark_existing}
), issued AS (
    UPDATE tm_util_lease l
    SET outcome = :skipped,
        error = format('utility invoice of lease %s for %s was issued while this run was billing it; '
                       'its statements stay pending for the next run',
                       l.lease_id, CAST(:billing_month AS text))
    WHERE l.outcome IN ({written_outcomes}) AND l.lease_id BETWEEN :first_lease_id AND :last_lease_id
      AND NOT EXISTS (SELECT FROM {returned} i WHERE i.lease_id = l.lease_id)
), line AS (
    INSERT INTO invoice_lines (invoice_id, line_type, source_id, description,
                               service_period_start, service_period_end, amount)
    SELECT i.id, :utility_line, t.statement_id,
           format('%s, %s to %s', initcap(coalesce(nullif(t.utility_type, ''), 'utility')),
                  t.period_start, t.period_end),
           t.period_start, t.period_end, t.amount
    FROM invoice i
    JOIN tm_util_stmt t ON t.lease_id = i.lease_id AND t.error IS NULL
    ORDER BY t.statement_id
    {line_on_conflict}
    RETURNING id, source_id
), linked AS (
    UPDATE utility_statements s
    SET invoice_line_id = line.id
    FROM line
    WHERE s.id = line.source_id AND s.invoice_line_id IS NULL AND s.{finalized}
    RETURNING s.id
)
SELECT (SELECT count(*) FROM line) AS lines, (SELECT count(*) FROM linked) AS linked
"""
# The leases' invoices, for the leases staged to have one created (`:created`) or their draft updated (`:updated`).
_UPSERT_INVOICES = """INSERT INTO invoices (organization_id, lease_id, invoice_type, billing_period_start,
                          billing_period_end, status, currency, subtotal, total, due_date, invoice_run_id)
    SELECT :organization_id, l.lease_id, :utility_invoice, :period_start, :period_end, :draft, :currency,
           l.new_amount, l.new_amount, :due_date, :invoice_run_id
    FROM tm_util_lease l
    WHERE l.outcome = {staged} AND l.lease_id BETWEEN :first_lease_id AND :last_lease_id
    {order}{on_conflict}
    RETURNING id, lease_id, (xmax = 0) AS created"""
# An upsert locks the invoices it finds in lease order, as every writer that takes several does. The
# fast statement's plain INSERT locks none: it takes the staging table's order (the lease staging's
# own, by lease), without sorting 200,000 rows on the way (0.15 s of bill_statements at 200,000).
_IN_LEASE_ORDER = "ORDER BY l.lease_id\n    "
_TOUCH_DRAFT = (
    "ON CONFLICT (lease_id, invoice_type, billing_period_start) DO UPDATE SET updated_at = now() "
    "WHERE invoices.status = :draft"
)
_SKIP_BILLED_STATEMENT = f"ON CONFLICT (source_id) WHERE {_UTILITY_LINE} DO NOTHING"
# The leases given a new invoice, when the upsert may have skipped some or found a draft (`marked_new`,
# the careful statement only): those it was returned, matched by lease. The fast statement either
# inserts every one of them or fails: they stay as staged, created (at 1,000,000 leases, marking them
# visited the staging table out of order: seconds of temporary-table I/O; in order, 0.1 s at 200,000).
# What an upsert of `returned` did, recorded for the leases it returned (their invoice, and whether
# it created or updated it).
_MARK_RETURNED = """UPDATE tm_util_lease l
    SET invoice_id = i.id, outcome = CASE WHEN i.created THEN :created ELSE :updated END
    FROM {returned} i
    WHERE l.lease_id = i.lease_id"""
_MARK_RETURNED_NEW = f""", marked_new AS (
    {_MARK_RETURNED.format(returned="new_invoice")}
)"""
_EXISTING_INVOICES = _UPSERT_INVOICES.format(staged=":updated", order=_IN_LEASE_ORDER, on_conflict=_TOUCH_DRAFT)
# What the fast and the careful statement share.
_BILL_EITHER_WAY = {
    "existing_invoice": _EXISTING_INVOICES,
    "mark_existing": _MARK_RETURNED.format(returned="existing_invoice"),
    "finalized": _FINALIZED,
}
_BILL = InsertFast(
    fast=_BILL_STATEMENTS.format(
        **_BILL_EITHER_WAY,
        new_invoice=_UPSERT_INVOICES.format(staged=":created", order="", on_conflict=""),
        line_on_conflict="",
        mark_new="",
        written_outcomes=":updated",
        returned="existing_invoice",
    ),
    careful=_BILL_STATEMENTS.format(
        **_BILL_EITHER_WAY,
        new_invoice=_UPSERT_INVOICES.format(staged=":created", order=_IN_LEASE_ORDER, on_conflict=_TOUCH_DRAFT),
        line_on_conflict=_SKIP_BILLED_STATEMENT,
        mark_new=_MARK_RETURNED_NEW,
        written_outcomes=":created, :updated",
        returned="invoice",
    ),
)

_RECOMPUTE_TOTALS = """
UPDATE invoices i
SET subtotal = s.total, total = s.total, due_date = :due_date, currency = :currency,
    invoice_run_id = :invoice_run_id, updated_at = now()
FROM (
    SELECT il.invoice_id, sum(il.amount) AS total
    FROM invoice_lines il
    WHERE il.invoice_id IN (SELECT invoice_id FROM tm_util_lease
                            WHERE outcome = ANY(:outcomes) AND lease_id BETWEEN :first_lease_id AND :last_lease_id)
    GROUP BY il.invoice_id
) s
WHERE i.id = s.invoice_id
"""

# The leases not written yet: staged to be written, and nothing else has happened to them.
_PENDING_LEASE_IDS = "SELECT lease_id FROM tm_util_lease WHERE outcome IN (:created, :updated) ORDER BY lease_id"

_RECORD_WRITE_FAILURE = """
UPDATE tm_util_lease SET outcome = :failed, error = :reason WHERE lease_id = :lease_id
"""

# Counts are of leases with pending statements. A lease with at least one statement billed is a
# success (its bad statements are still listed in errors); one whose invoice is no longer a draft
# is skipped; one with nothing billable is a failure.
_COUNTS = """
SELECT count(*) AS total,
       count(*) FILTER (WHERE outcome IN (:created, :updated)) AS success,
       count(*) FILTER (WHERE outcome = :skipped) AS skipped,
       count(*) FILTER (WHERE outcome = :failed) AS failed,
       count(*) FILTER (WHERE outcome = :created) AS created,
       count(*) FILTER (WHERE outcome = :updated) AS updated,
       0 AS unchanged,
       sum(new_amount) FILTER (WHERE outcome IN (:created, :updated)) AS amount_billed
FROM tm_util_lease
"""

_ERRORS = """
SELECT lease_id, error FROM (
    SELECT lease_id, statement_id AS sort_key, error FROM tm_util_stmt WHERE error IS NOT NULL
    UNION ALL
    SELECT lease_id, 0, error FROM tm_util_lease WHERE error IS NOT NULL
) e
ORDER BY lease_id NULLS FIRST, sort_key
"""


_UTILITY = StagedRun(
    invoice_type=InvoiceType.UTILITY,
    staging=_STAGES,
    write_stage_names=("bill_statements", "recompute_totals"),
    write_batch=_write_batch,
    pending_lease_ids=_PENDING_LEASE_IDS,
    record_write_failure=_RECORD_WRITE_FAILURE,
    counts=_COUNTS,
    errors=_ERRORS,
)

# Every stage a call that bills (a usable currency) reports, in order.
UTILITY_STAGES = _UTILITY.stage_names


def default_due_date(period: BillingPeriod, due_days: int) -> date:
    return period.end + timedelta(days=due_days)
