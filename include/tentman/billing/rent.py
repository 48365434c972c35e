"""Monthly rent billing engine: draft rent invoices for one organization and one month.

Set-based: an organization is billed with a fixed number of SQL statements whatever its size (the
leases in scope, their lines and the existing invoices are staged in temporary tables), never one
round trip per lease. All work happens on the caller's transaction; the caller commits (or, for a
dry run or the page's preview, rolls back).

Rules (see docs/billing-rules.md, "Rent"):
- leases with status `active` whose occupancy overlaps the period are billed;
- one draft rent invoice per lease and period: a rent line plus one recurring-charge line per
  active charge overlapping the occupied days, each prorated over its own days;
- a re-run recomputes each draft in place; issued/paid/void invoices are never touched (skipped);
- a lease with bad data is recorded as a failure with its reason and the rest is billed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from sqlalchemy.engine import Connection

from tentman.application_schema import MAX_AMOUNT
from tentman.billing.leases import OUTCOME_BINDS, LeaseOutcome, LeaseStatus
from tentman.billing.periods import BillingPeriod
from tentman.billing.results import OrganizationBillingResult
from tentman.billing.staged_run import StagedRun, run_stages
from tentman.billing.staging import InsertFast, analyze_staging
from tentman.billing.timing import StageClock, StageTimings, stage_clock
from tentman.db import execute
from tentman.names import PRORATE_FUNCTION, InvoiceStatus, InvoiceType, LineType, ProrationMethod

# The lease vocabulary RENT_LEASES_OF_PERIOD reads.
RENT_LEASE_BINDS = {"active": LeaseStatus.ACTIVE.value, "lease_statuses": [status.value for status in LeaseStatus]}
# The vocabulary the statements below read, bound by these names.
_VOCABULARY = {
    "rent_invoice": InvoiceType.RENT.value,
    "draft": InvoiceStatus.DRAFT.value,
    "rent_line": LineType.RENT.value,
    "recurring_charge_line": LineType.RECURRING_CHARGE.value,
    **RENT_LEASE_BINDS,
    **OUTCOME_BINDS,
}


def generate_rent_invoices(
    conn: Connection,
    *,
    organization_id: int,
    period: BillingPeriod,
    proration_method: ProrationMethod,
    invoice_run_id: int | None,
    timings: StageTimings | None = None,
) -> OrganizationBillingResult:
    """Create or update the draft rent invoices of one organization for `period`.

    Runs on the caller's transaction and takes the organization's rent lock. Raises on
    organization-level failures (lost connection, missing organization) so the caller can retry.
    `timings`, when given, receives the seconds of each stage (RENT_STAGES).
    """
    clock = stage_clock(timings)
    params = {
        "organization_id": organization_id,
        "period_start": period.start,
        "period_end": period.end,
        "period_days": period.days,
        "proration_method": proration_method.value,
        "due_date": period.start,  # rent is due on the first day of the month it pays for
        "invoice_run_id": invoice_run_id,
        "max_amount": MAX_AMOUNT,
        **_VOCABULARY,
    }
    result, _ = _RENT.bill(conn, organization_id, params, clock)
    return result


@dataclass(frozen=True)
class PlannedLine:
    """A line rent billing computed for a lease."""

    line_type: str
    source_id: int
    description: str
    service_period_start: date | None
    service_period_end: date | None
    amount: Decimal


@dataclass(frozen=True)
class PlannedLease:
    """A lease in scope of a rent run: what the run did with it, its new total and lines."""

    lease_id: int
    unit_label: str
    # Why the lease was not billed (its outcome is then failed).
    error: str | None
    total: Decimal | None
    outcome: LeaseOutcome | None
    # As computed, also for a lease the run then did not write (skipped or failed on its total).
    lines: tuple[PlannedLine, ...]


def plan_rent_invoices(
    conn: Connection,
    *,
    organization_id: int,
    period: BillingPeriod,
    proration_method: ProrationMethod,
    limit: int,
    offset: int,
) -> tuple[OrganizationBillingResult, list[PlannedLease]]:
    """Bill as a run without an id would, and return its result and a page of its leases, by id.

    Writes on `conn`'s transaction, which the caller must roll back (the page's preview).
    """
    result = generate_rent_invoices(
        conn,
        organization_id=organization_id,
        period=period,
        proration_method=proration_method,
        invoice_run_id=None,
    )
    if result.organization_error is not None:
        return result, []
    leases = execute(conn, _PLANNED_LEASES, {"limit": limit, "offset": offset}).all()
    lines: dict[int, list[PlannedLine]] = {row.lease_id: [] for row in leases}
    for row in execute(conn, _PLANNED_LINES, {"lease_ids": list(lines)}):
        lines[row.lease_id].append(
            PlannedLine(
                row.line_type,
                row.source_id,
                row.description,
                row.service_period_start,
                row.service_period_end,
                row.amount,
            )
        )
    planned = [
        PlannedLease(
            row.lease_id,
            row.unit_label,
            row.error,
            row.total,
            None if row.outcome is None else LeaseOutcome(row.outcome),
            tuple(lines[row.lease_id]),
        )
        for row in leases
    ]
    return result, planned


_PLANNED_LEASES = """
SELECT l.lease_id, l.unit_label, l.error, t.total, t.outcome
FROM tm_rent_lease l LEFT JOIN tm_rent_target t ON t.lease_id = l.lease_id
ORDER BY l.lease_id LIMIT :limit OFFSET :offset
"""

# The rent line first, then the charges.
_PLANNED_LINES = """
SELECT lease_id, line_type, source_id, description, service_period_start, service_period_end, amount
FROM tm_rent_line WHERE lease_id = ANY(:lease_ids) ORDER BY lease_id, line_type DESC, source_id
"""


# The rent engine's rule, stated once: the leases of an organization in scope for a period, with the
# reason each one cannot be billed (null = billable). Leases with an unknown status that touch the
# period are in scope so the bad status is reported. Stage 1 stages it; the reconciliation after
# each run (tentman.billing.reconciliation) reads it again, for one organization or for several
# (`organizations`, a condition on `l`, the leases). Binds :period_start, :period_end, :active and
# :lease_statuses (RENT_LEASE_BINDS), and RENT_LEASES_OF_PERIOD :organization_id.
def rent_leases_of_period(organizations: str) -> str:
    return f"""
SELECT l.id AS lease_id,
       coalesce(l.unit_label, '') AS unit_label,
       l.monthly_rent,
       greatest(l.start_date, CAST(:period_start AS date)) AS occ_start,
       least(coalesce(l.end_date, CAST(:period_end AS date)), CAST(:period_end AS date)) AS occ_end,
       CASE
           WHEN l.status IS NULL OR l.status <> ALL(CAST(:lease_statuses AS text[]))
               THEN format('lease status %s is unknown; expected one of %s',
                           coalesce(quote_literal(l.status), 'null'),
                           array_to_string(CAST(:lease_statuses AS text[]), ', '))
           WHEN l.start_date IS NULL THEN 'lease has no start_date'
           WHEN l.end_date < l.start_date
               THEN format('lease end_date %s is before its start_date %s', l.end_date, l.start_date)
           WHEN l.monthly_rent IS NULL THEN 'lease has no monthly_rent'
           WHEN l.monthly_rent < 0 THEN format('monthly_rent %s is negative', l.monthly_rent)
       END AS error
FROM leases l
WHERE {organizations}
  AND (l.status = :active OR l.status IS NULL OR l.status <> ALL(CAST(:lease_statuses AS text[])))
  AND (l.start_date IS NULL OR l.start_date <= :period_end)
  AND (l.end_date IS NULL OR l.end_date >= :period_start)
"""


RENT_LEASES_OF_PERIOD = rent_leases_of_period("l.organization_id = :organization_id")

# Stage 1: the leases in scope, with the reason each one cannot be billed (null = billable).
_STAGE_LEASES = f"CREATE TEMP TABLE tm_rent_lease ON COMMIT DROP AS {RENT_LEASES_OF_PERIOD}"

# Stage 2: the lines every billable lease should have (the charges are read once). A charge without a
# start date runs from the start of the occupancy. A bad active charge in the occupied days is
# staged too, with its `error`: its lease then fails as a whole (stage 3), so no invoice is ever
# drafted with a charge silently missing. (For a good charge, overlapping the occupied days is the
# same as a service period of at least one day.)
_STAGE_LINES = f"""
CREATE TEMP TABLE tm_rent_line ON COMMIT DROP AS
SELECT l.lease_id,
       CAST(:rent_line AS text) AS line_type,
       l.lease_id AS source_id,
       format('Rent, unit %s, %s to %s', l.unit_label, l.occ_start, l.occ_end) AS description,
       l.occ_start AS service_period_start,
       l.occ_end AS service_period_end,
       {PRORATE_FUNCTION}(l.monthly_rent, l.occ_end - l.occ_start + 1, :period_days, :proration_method) AS amount,
       NULL::text AS error
FROM tm_rent_lease l
WHERE l.error IS NULL
UNION ALL
SELECT c.lease_id,
       CAST(:recurring_charge_line AS text),
       c.id,
       format('%s, %s to %s',
              coalesce(nullif(c.description, ''), nullif(c.charge_type, ''), 'Recurring charge'),
              c.svc_start, c.svc_end),
       c.svc_start,
       c.svc_end,
       {PRORATE_FUNCTION}(c.amount, c.svc_end - c.svc_start + 1, :period_days, :proration_method),
       CASE
           WHEN c.amount IS NULL THEN format('recurring charge %s has no amount', c.id)
           WHEN c.amount < 0 THEN format('recurring charge %s amount %s is negative', c.id, c.amount)
           WHEN c.end_date < c.start_date
               THEN format('recurring charge %s end_date %s is before its start_date %s',
                           c.id, c.end_date, c.start_date)
       END
FROM (
    SELECT c.id, c.lease_id, c.description, c.charge_type, c.amount, c.start_date, c.end_date,
           greatest(coalesce(c.start_date, l.occ_start), l.occ_start) AS svc_start,
           least(coalesce(c.end_date, l.occ_end), l.occ_end) AS svc_end
    FROM lease_recurring_charges c
    JOIN tm_rent_lease l ON l.lease_id = c.lease_id AND l.error IS NULL
    WHERE c.is_active
      AND (c.start_date IS NULL OR c.start_date <= l.occ_end)
      AND (c.end_date IS NULL OR c.end_date >= l.occ_start)
) c
"""

# Stage 3: a lease with a bad charge fails with the first one's reason, and its lines are dropped.
_FLAG_BAD_CHARGES = """
WITH bad AS (
    SELECT DISTINCT ON (lease_id) lease_id, error
    FROM tm_rent_line
    WHERE error IS NOT NULL
    ORDER BY lease_id, source_id
), flagged AS (
    UPDATE tm_rent_lease t SET error = bad.error FROM bad WHERE t.lease_id = bad.lease_id
)
DELETE FROM tm_rent_line l USING bad WHERE l.lease_id = bad.lease_id
"""

# Stage 4: per billable lease, its new total, the invoice it already has for the period, and what
# the write will do with it: `outcome` is planned here where the staging knows it — created (no
# invoice yet), skipped (issued, paid or void: never touched) — and null for an existing draft, which
# the write finds updated or unchanged. A planned creation the write cannot make is then skipped
# (another writer created the invoice meanwhile: _INSERT_NEW_SKIPPING_CONCURRENT) or failed
# (_RECORD_WRITE_FAILURE).
_STAGE_TARGETS = """
CREATE TEMP TABLE tm_rent_target ON COMMIT DROP AS
SELECT t.lease_id, t.total, i.id AS invoice_id, i.status AS invoice_status,
       i.organization_id AS invoice_organization_id,
       (i.id IS NOT NULL AND (
            i.subtotal IS DISTINCT FROM t.total OR i.total IS DISTINCT FROM t.total
            OR i.due_date IS DISTINCT FROM CAST(:due_date AS date)
            OR i.currency IS DISTINCT FROM CAST(:currency AS char(3))
            OR i.billing_period_end IS DISTINCT FROM CAST(:period_end AS date)
       )) AS header_changed,
       CASE WHEN i.id IS NULL THEN :created WHEN i.status <> :draft THEN :skipped END AS outcome
FROM (
    -- Each billable lease has one rent line; only the leases with charges (a third in `make bench`)
    -- are summed. Grouping all the lines by lease took 0.04 s more of the database's time at 200,000
    -- leases, and the insert after it 0.03–0.37 s more in each of four alternating runs.
    SELECT r.lease_id, r.amount + coalesce(c.charges, 0) AS total
    FROM tm_rent_line r
    LEFT JOIN (
        SELECT lease_id, sum(amount) AS charges
        FROM tm_rent_line
        WHERE line_type = :recurring_charge_line
        GROUP BY lease_id
    ) c ON c.lease_id = r.lease_id
    WHERE r.line_type = :rent_line
) t
LEFT JOIN invoices i
       ON i.lease_id = t.lease_id AND i.invoice_type = :rent_invoice AND i.billing_period_start = :period_start
"""

# A lease fails on its target: an invoice of another organization holds its key (reported first),
# or its total is more than an invoice can hold. Its target is dropped; its lines stay (the
# preview shows what was computed).
_FLAG_TARGETS = """
WITH flagged AS (
    SELECT t.lease_id,
           CASE
               WHEN t.invoice_organization_id <> :organization_id
                   THEN format('rent invoice %s for this lease and period belongs to organization %s',
                               t.invoice_id, t.invoice_organization_id)
               ELSE format('invoice total %s exceeds the largest amount an invoice can hold (%s)',
                           t.total, CAST(:max_amount AS numeric))
           END AS error
    FROM tm_rent_target t
    WHERE t.invoice_organization_id <> :organization_id OR t.total > :max_amount
), failed AS (
    UPDATE tm_rent_lease l SET error = f.error FROM flagged f WHERE l.lease_id = f.lease_id
)
DELETE FROM tm_rent_target t USING flagged f WHERE t.lease_id = f.lease_id
"""

# Stage 5: line differences between what existing drafts hold and what they should hold.
# `n` is each draft's lines as they should be, `o` its lines as stored; they are matched on
# (invoice, line type, source). A row of the FULL JOIN then means one of three things:
# - o.id IS NULL: the line is new (n only) — inserted;
# - n.invoice_id IS NULL: the line is no longer due (o only, e.g. a charge that ended) — deleted
#   (its n columns, line_type included, are NULL, which is how _DELETE_OLD_LINES finds it);
# - both sides, with different text, dates or amount: the line changed — upserted.
# Lines equal on both sides are not in the diff at all, so an unchanged draft is never rewritten
# (only its link to the run is: _LINK_UNCHANGED).
_STAGE_LINE_DIFF = """
CREATE TEMP TABLE tm_rent_line_diff ON COMMIT DROP AS
SELECT coalesce(n.invoice_id, o.invoice_id) AS invoice_id,
       o.id AS old_line_id,
       n.line_type, n.source_id, n.description, n.service_period_start, n.service_period_end, n.amount
FROM (
    SELECT t.invoice_id, l.*
    FROM tm_rent_line l
    JOIN tm_rent_target t ON t.lease_id = l.lease_id AND t.invoice_status = :draft
) n
FULL JOIN (
    SELECT il.*
    FROM invoice_lines il
    JOIN tm_rent_target t ON t.invoice_id = il.invoice_id AND t.invoice_status = :draft
) o ON o.invoice_id = n.invoice_id AND o.line_type = n.line_type AND o.source_id = n.source_id
WHERE o.id IS NULL OR n.invoice_id IS NULL
   OR (o.description, o.service_period_start, o.service_period_end, o.amount)
      IS DISTINCT FROM (n.description, n.service_period_start, n.service_period_end, n.amount)
"""

# The staging stages, by the name their time is reported under (StageTimings). Each staging table
# is analyzed (analyze_staging) so the next statements are planned for its real size.
_STAGES = (
    ("stage_leases", (_STAGE_LEASES, analyze_staging("tm_rent_lease", "lease_id", "error"))),
    ("stage_lines", (_STAGE_LINES, analyze_staging("tm_rent_line", "lease_id", "line_type", "source_id"))),
    ("flag_bad_charges", (_FLAG_BAD_CHARGES,)),
    ("stage_targets", (_STAGE_TARGETS,)),
    ("flag_targets", (_FLAG_TARGETS,)),
    (
        "analyze_targets",
        (analyze_staging("tm_rent_target", "lease_id", "invoice_id", "invoice_status", "outcome", "header_changed"),),
    ),
    (
        "stage_line_diff",
        (_STAGE_LINE_DIFF, analyze_staging("tm_rent_line_diff", "invoice_id", "old_line_id", "line_type")),
    ),
)

# New invoices and their lines in one statement, first as plain INSERTs (InsertFast): under our
# lock the staging knows these invoices are new, and ON CONFLICT would cost a probe of the unique
# index before each insertion and a WAL record confirming it. The fast statement writes every
# planned creation of the batch, or fails: their outcome, planned by the staging, is then true, and
# nothing is marked (marking 200,000 staged leases cost 85 ms of the database's time). Another
# writer not holding our lock (the TentMan app) may have created one of these invoices meanwhile:
# the plain INSERT then fails on the unique key, nothing of it stays (its savepoint is rolled back),
# and the careful statement runs, with ON CONFLICT DO NOTHING, which leaves that invoice alone and
# reports its lease skipped. The invoices are inserted in lease order: in the staging's (hash)
# order, the same insert took 0.44 s more of the database's time at 200,000 leases (its index and
# foreign-key lookups all over the indexes).
_INSERT_NEW = """
WITH new_invoice AS (
    INSERT INTO invoices (organization_id, lease_id, invoice_type, billing_period_start,
                          billing_period_end, status, currency, subtotal, total, due_date,
                          invoice_run_id)
    SELECT :organization_id, t.lease_id, :rent_invoice, :period_start, :period_end, :draft, :currency,
           t.total, t.total, :due_date, :invoice_run_id
    FROM tm_rent_target t
    WHERE t.outcome = :created AND t.lease_id BETWEEN :first_lease_id AND :last_lease_id
    ORDER BY t.lease_id
    {on_conflict}
    RETURNING id, lease_id
){new_lines}
"""
# The columns rent writes of an invoice line, in the order both line inserts select them.
_LINE_COLUMNS = "invoice_id, line_type, source_id, description, service_period_start, service_period_end, amount"
_NEW_LINES = f"""
INSERT INTO invoice_lines ({_LINE_COLUMNS})
SELECT n.id, l.line_type, l.source_id, l.description, l.service_period_start,
       l.service_period_end, l.amount
FROM new_invoice n
JOIN tm_rent_line l ON l.lease_id = n.lease_id"""
_INSERT_NEW_FAST = _INSERT_NEW.format(on_conflict="", new_lines=_NEW_LINES)
_INSERT_NEW_SKIPPING_CONCURRENT = _INSERT_NEW.format(
    on_conflict="ON CONFLICT (lease_id, invoice_type, billing_period_start) DO NOTHING",
    new_lines=f""", new_line AS ({_NEW_LINES}
)
UPDATE tm_rent_target t
SET outcome = :skipped
WHERE t.outcome = :created AND t.lease_id BETWEEN :first_lease_id AND :last_lease_id
  AND NOT EXISTS (SELECT 1 FROM new_invoice n WHERE n.lease_id = t.lease_id)""",
)

# Existing drafts that differ are updated; `status = :draft` is re-checked on the row itself so
# an invoice issued meanwhile by the application is left alone (and reported as skipped).
_UPDATE_CHANGED = """
WITH changed AS (
    SELECT t.invoice_id, t.total
    FROM tm_rent_target t
    WHERE t.invoice_status = :draft AND t.outcome IS NULL AND t.lease_id BETWEEN :first_lease_id AND :last_lease_id
      AND (t.header_changed OR EXISTS (SELECT 1 FROM tm_rent_line_diff d WHERE d.invoice_id = t.invoice_id))
), updated AS (
    UPDATE invoices i
    SET billing_period_end = :period_end, currency = :currency, subtotal = c.total, total = c.total,
        due_date = :due_date, invoice_run_id = :invoice_run_id, updated_at = now()
    FROM changed c
    WHERE i.id = c.invoice_id AND i.status = :draft
    RETURNING i.id
)
UPDATE tm_rent_target t
SET outcome = CASE WHEN u.id IS NULL THEN :skipped ELSE :updated END
FROM changed c LEFT JOIN updated u ON u.id = c.invoice_id
WHERE t.invoice_id = c.invoice_id
"""

_DELETE_OLD_LINES = """
DELETE FROM invoice_lines il
USING tm_rent_line_diff d
JOIN tm_rent_target t ON t.invoice_id = d.invoice_id AND t.outcome = :updated
WHERE il.id = d.old_line_id AND d.line_type IS NULL AND t.lease_id BETWEEN :first_lease_id AND :last_lease_id
"""

_UPSERT_CHANGED_LINES = f"""
INSERT INTO invoice_lines ({_LINE_COLUMNS})
SELECT d.invoice_id, d.line_type, d.source_id, d.description, d.service_period_start,
       d.service_period_end, d.amount
FROM tm_rent_line_diff d
JOIN tm_rent_target t ON t.invoice_id = d.invoice_id AND t.outcome = :updated
WHERE d.line_type IS NOT NULL AND t.lease_id BETWEEN :first_lease_id AND :last_lease_id
ORDER BY d.invoice_id, d.line_type, d.source_id
ON CONFLICT (invoice_id, line_type, source_id) DO UPDATE
SET description = excluded.description,
    service_period_start = excluded.service_period_start,
    service_period_end = excluded.service_period_end,
    amount = excluded.amount
"""

_MARK_UNCHANGED = """
UPDATE tm_rent_target SET outcome = :unchanged
WHERE outcome IS NULL AND lease_id BETWEEN :first_lease_id AND :last_lease_id
"""

# An unchanged draft is part of what this run drafted (it counts it in amount_billed): link it to
# the run, so the run's invoices are the ones with its invoice_run_id (the "Billing runs" page
# counts them so). updated_at stays: the invoice's content did not change. Only rows whose link
# actually changes are written (a run with no id, as in a preview, links nothing).
_LINK_UNCHANGED = """
UPDATE invoices i SET invoice_run_id = :invoice_run_id
FROM tm_rent_target t
WHERE t.outcome = :unchanged AND t.lease_id BETWEEN :first_lease_id AND :last_lease_id
  AND i.id = t.invoice_id AND i.status = :draft
  AND CAST(:invoice_run_id AS bigint) IS NOT NULL AND i.invoice_run_id IS DISTINCT FROM CAST(:invoice_run_id AS bigint)
"""


# The write stages, run once per batch of leases (all of them, unless bad leases are bisected).
_WRITE_STAGES = (
    ("insert_new", (InsertFast(_INSERT_NEW_FAST, _INSERT_NEW_SKIPPING_CONCURRENT),)),
    ("update_changed", (_UPDATE_CHANGED,)),
    ("delete_old_lines", (_DELETE_OLD_LINES,)),
    ("upsert_changed_lines", (_UPSERT_CHANGED_LINES,)),
    ("mark_unchanged", (_MARK_UNCHANGED,)),
    ("link_unchanged", (_LINK_UNCHANGED,)),
)


def _write_batch(conn: Connection, params: dict, clock: StageClock) -> Counter[str]:
    """Write the batch's invoices (StagedRun.write_batch); its counts are read from the staging tables."""
    run_stages(conn, _WRITE_STAGES, params, clock)
    return Counter()


# Read before any batch is written: the leases planned created, and the drafts.
_PENDING_LEASE_IDS = """
SELECT lease_id FROM tm_rent_target WHERE outcome IS DISTINCT FROM :skipped ORDER BY lease_id
"""

_RECORD_WRITE_FAILURE = """
WITH failed AS (
    UPDATE tm_rent_lease SET error = :reason WHERE lease_id = :lease_id
)
DELETE FROM tm_rent_target WHERE lease_id = :lease_id
"""

# A lease is a failure (an error, and no target), skipped, or a success (created, updated, unchanged).
_COUNTS = """
SELECT leases.total, leases.failed, skipped, leases.total - leases.failed - skipped AS success,
       created, updated, unchanged, amount_billed
FROM (SELECT count(*) AS total, count(error) AS failed FROM tm_rent_lease) leases,
     (SELECT count(*) FILTER (WHERE outcome = :skipped) AS skipped,
             count(*) FILTER (WHERE outcome = :created) AS created,
             count(*) FILTER (WHERE outcome = :updated) AS updated,
             count(*) FILTER (WHERE outcome = :unchanged) AS unchanged,
             sum(total) FILTER (WHERE outcome IN (:created, :updated, :unchanged)) AS amount_billed
      FROM tm_rent_target) targets
"""

_ERRORS = "SELECT lease_id, error FROM tm_rent_lease WHERE error IS NOT NULL ORDER BY lease_id"

# A draft this job made for a lease that is no longer billed for the period (terminated, dates
# changed) would otherwise be issued by mistake: remove it. Drafts of leases that failed this run
# are kept as they were; invoices the application made itself (no run id) are never removed.
# It runs before the write: the drafts it may remove are those of earlier runs (a lease this run
# writes is staged, so its draft is never stale), and on a period's first run there are none to
# read; after the write it read every draft the run had just inserted (0.14 s at 200,000 leases).
# The drafts runs of this job made for the period (`i`: the invoices), which the check and the
# delete below both read.
_RUN_DRAFTS_OF_PERIOD = """i.organization_id = :organization_id
  AND i.invoice_type = :rent_invoice
  AND i.billing_period_start = :period_start
  AND i.status = :draft
  AND i.invoice_run_id IS NOT NULL"""

_HAS_DRAFTS_OF_EARLIER_RUNS = f"SELECT EXISTS (SELECT 1 FROM invoices i WHERE {_RUN_DRAFTS_OF_PERIOD})"

# The delete reads the drafts of earlier runs, which the invoices' statistics may not know yet
# (a re-run right after the period's first run): planned for one draft, it paired each with a scan
# of the staged leases. On PostgreSQL 15, at 20,000 leases that took 11.8 s of the run's 12.5 s
# (quadratic: at 200,000, about twenty minutes). Indexed, each draft is one probe.
_INDEX_BILLED_LEASES = "CREATE INDEX ON tm_rent_lease (lease_id)"

_DELETE_STALE_DRAFTS = f"""
DELETE FROM invoices i
WHERE {_RUN_DRAFTS_OF_PERIOD}
  AND NOT EXISTS (SELECT 1 FROM tm_rent_lease l WHERE l.lease_id = i.lease_id)
"""


def _delete_stale_drafts(conn: Connection, params: dict, result: OrganizationBillingResult) -> None:
    """Remove the drafts of earlier runs for leases this run no longer bills (StagedRun.before_write)."""
    if execute(conn, _HAS_DRAFTS_OF_EARLIER_RUNS, params).scalar_one():
        execute(conn, _INDEX_BILLED_LEASES)
        result.stale_drafts_removed = execute(conn, _DELETE_STALE_DRAFTS, params).rowcount


_RENT = StagedRun(
    invoice_type=InvoiceType.RENT,
    staging=_STAGES,
    write_stage_names=tuple(name for name, _ in _WRITE_STAGES),
    write_batch=_write_batch,
    pending_lease_ids=_PENDING_LEASE_IDS,
    record_write_failure=_RECORD_WRITE_FAILURE,
    counts=_COUNTS,
    errors=_ERRORS,
    before_write=("delete_stale_drafts", _delete_stale_drafts),
)

# Every stage a call that bills (a usable currency) reports, in order.
RENT_STAGES = _RENT.stage_names
