"""Reconciliation: after a run, prove what it billed for one organization, with set-based SQL over
that organization's rows of the period. docs/billing-rules.md, "Reconciliation", says what an
operator does with a violation.

The checks (CHECKS), each a verdict and, for a violation, the offending ids (the first MAX_IDS and
a count):

- `rent_coverage` (rent runs): every lease billable for the period — the rent engine's own rule,
  tentman.billing.rent.RENT_LEASES_OF_PERIOD — has exactly one rent invoice for the period in any
  status, or is named in the run's `invoice_runs.errors`; and no draft rent invoice of the period is
  for a lease that is not billable. Ids: leases.
- `utility_coverage` (utility runs): every finalized statement of the organization the run should
  have billed (finalized by the time the run started, ending by the period's end) is linked to a
  utility line that bills it (its `source_id`) for the statement's amount, or its lease is named in
  the errors; no statement is on two lines and no line is linked from two statements. Ids: statements.
- `totals`: each draft invoice of the organization, type and period has `subtotal` and `total`
  equal to the sum of its lines, and at least one line. Ids: invoices.
- `hands_off`: no `issued`, `paid` or `void` invoice of the organization, nor a line of one, was
  written during the run. "Written during the run" is PostgreSQL's own row version: the row's
  `xmin`, the transaction that wrote it, lies between the transaction that opened the organization's
  run (recorded by `record_run_start`) and the one that reconciles it. Every write moves `xmin`,
  whoever makes it and whatever it writes: an application that leaves `updated_at` alone or sets it
  back cannot hide an edit, and the billing engine's own writes (drafts only) are not counted. A
  deleted issued invoice leaves no row: not checked. Ids: invoices.
- `counts`: the `invoice_runs` row adds up (total = success + skipped + failure) and matches what
  is found: rent — success + skipped = the billable leases' invoices, failures = the leases named in
  its errors; utility — every skipped or failed lease is named in its errors (a billed lease may be
  named too, for one bad statement among good ones). Ids: the invoice run.

Only organizations the run billed are reconciled (`completed`, `completed_with_errors`): a failed
organization billed nothing and has its own alert; one on hold was not billed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tentman.billing.periods import BillingPeriod
from tentman.billing.rent import RENT_LEASE_BINDS, RENT_LEASES_OF_PERIOD
from tentman.billing.timing import StageTimings, stage_clock
from tentman.names import (
    RECONCILIATIONS_TABLE,
    InvoiceStatus,
    InvoiceType,
    LineType,
    RunStatus,
    RunType,
    StatementStatus,
)

RENT_COVERAGE, UTILITY_COVERAGE, TOTALS, HANDS_OFF, COUNTS = (
    "rent_coverage",
    "utility_coverage",
    "totals",
    "hands_off",
    "counts",
)
CHECKS = (RENT_COVERAGE, UTILITY_COVERAGE, TOTALS, HANDS_OFF, COUNTS)
CHECKS_OF_RUN = {
    RunType.MONTHLY_RENT: (RENT_COVERAGE, TOTALS, HANDS_OFF, COUNTS),
    RunType.UTILITY: (UTILITY_COVERAGE, TOTALS, HANDS_OFF, COUNTS),
}
# The statuses of an organization's row that say the run billed it.
RECONCILED_STATUSES = (RunStatus.COMPLETED, RunStatus.COMPLETED_WITH_ERRORS)
MAX_IDS = 100
_XID_SPACE = 2**32


@dataclass(frozen=True)
class CheckResult:
    check: str
    ok: bool
    violations: int = 0
    ids: list[int] = field(default_factory=list)  # the first MAX_IDS offending ids
    # Why a check could not be made (then ok): e.g. no run window recorded for `hands_off`.
    note: str | None = None


@dataclass(frozen=True)
class Reconciliation:
    """One organization's part of one run, reconciled."""

    invoice_run_id: int
    organization_id: int
    run_type: str
    billing_period_start: str
    dag_id: str
    dag_run_id: str
    checks: list[CheckResult]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def violations(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.ok]

    def describe(self) -> str:
        """One line: "ok", or each failing check with its count and example ids."""
        if self.ok:
            return "ok"
        return "; ".join(
            f"{c.check}: {c.violations} violation{'s' if c.violations != 1 else ''} "
            f"({', '.join(map(str, c.ids[:10]))}{', …' if c.violations > 10 else ''})"
            for c in self.violations
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def record_run_start(conn: Connection, invoice_run_id: int) -> None:
    """Note the transaction that opens an organization's run: the start of the `hands_off` window.
    Each attempt (a retry, a cleared task) starts a new window and forgets the last verdict: what
    an earlier attempt wrote was rolled back or is written again by this one."""
    conn.execute(
        sa.text(
            f"""
            INSERT INTO {RECONCILIATIONS_TABLE} (invoice_run_id, started_xid)
            VALUES (:id, CAST(CAST(pg_current_xact_id() AS text) AS bigint) % :space)
            ON CONFLICT (invoice_run_id) DO UPDATE
            SET started_xid = excluded.started_xid, ended_xid = NULL, checked_at = NULL, ok = NULL, checks = NULL
            """
        ),
        {"id": invoice_run_id, "space": _XID_SPACE},
    )


def invoice_runs_to_reconcile(conn: Connection, *, dag_id: str, dag_run_id: str) -> list[int]:
    """The invoice runs of a DAG run that billed their organization, by organization id."""
    return list(
        conn.execute(
            sa.text(
                """
                SELECT id FROM invoice_runs
                WHERE dag_id = :dag_id AND dag_run_id = :dag_run_id AND status = ANY(:statuses)
                ORDER BY organization_id
                """
            ),
            {"dag_id": dag_id, "dag_run_id": dag_run_id, "statuses": [s.value for s in RECONCILED_STATUSES]},
        ).scalars()
    )


def latest_invoice_runs(
    conn: Connection, *, run_type: str, period: BillingPeriod, organization_id: int | None = None
) -> list[int]:
    """Each organization's latest invoice run that billed it for `run_type` and `period`."""
    return list(
        conn.execute(
            sa.text(
                """
                SELECT DISTINCT ON (organization_id) id FROM invoice_runs
                WHERE run_type = :run_type AND billing_period_start = :period_start AND status = ANY(:statuses)
                  AND (CAST(:org AS bigint) IS NULL OR organization_id = :org)
                ORDER BY organization_id, started_at DESC, id DESC
                """
            ),
            {
                "run_type": run_type,
                "period_start": period.start,
                "org": organization_id,
                "statuses": [s.value for s in RECONCILED_STATUSES],
            },
        ).scalars()
    )


def reconcile_invoice_run(conn: Connection, invoice_run_id: int, timings: StageTimings | None = None) -> Reconciliation:
    """Run every check of the invoice run's type and store the verdict (on the caller's transaction);
    `timings` gets each check's seconds, by its name (`make bench`)."""
    clock = stage_clock(timings)
    # The checks read every row of the organization's period once; their estimates, from statistics
    # of rows the run has just written, are priced high enough to JIT-compile the statements, which
    # cost more than running them (utility_coverage: 1.6 s of JIT for 0.1 s of work at 20,000).
    conn.execute(sa.text("SET LOCAL jit = off"))
    run = conn.execute(sa.text("SELECT * FROM invoice_runs WHERE id = :id"), {"id": invoice_run_id}).one()
    window = conn.execute(
        sa.text(
            f"""
            INSERT INTO {RECONCILIATIONS_TABLE} AS r (invoice_run_id, ended_xid)
            VALUES (:id, CAST(CAST(pg_current_xact_id() AS text) AS bigint) % :space)
            ON CONFLICT (invoice_run_id) DO UPDATE SET ended_xid = coalesce(r.ended_xid, excluded.ended_xid)
            RETURNING started_xid, ended_xid
            """
        ),
        {"id": invoice_run_id, "space": _XID_SPACE},
    ).one()
    params = {
        "org": run.organization_id,
        "run_id": run.id,
        "run_type": run.run_type,
        "period_start": run.billing_period_start,
        "period_end": run.billing_period_end,
        "run_started_at": run.started_at,
        "invoice_type": InvoiceType.RENT.value if run.run_type == RunType.MONTHLY_RENT else InvoiceType.UTILITY.value,
        "draft": InvoiceStatus.DRAFT.value,
        "utility_line": LineType.UTILITY.value,
        "finalized": StatementStatus.FINALIZED.value,
        "started_xid": window.started_xid,
        "ended_xid": window.ended_xid,
        "space": _XID_SPACE,
        "max_ids": MAX_IDS,
        # RENT_LEASES_OF_PERIOD's names.
        "organization_id": run.organization_id,
        **RENT_LEASE_BINDS,
    }
    checks = []
    for check in CHECKS_OF_RUN[RunType(run.run_type)]:
        if check == HANDS_OFF and window.started_xid is None:
            checks.append(CheckResult(check, True, note="no run window recorded (a run of an earlier release)"))
            continue
        with clock.stage(check):
            count, ids = conn.execute(sa.text(_offending(check, run.run_type)), params).one()
        checks.append(CheckResult(check, count == 0, count, list(ids or [])))
    result = Reconciliation(
        run.id,
        run.organization_id,
        run.run_type,
        run.billing_period_start.isoformat(),
        run.dag_id,
        run.dag_run_id,
        checks,
    )
    _store(conn, result)
    return result


def _store(conn: Connection, result: Reconciliation) -> None:
    conn.execute(
        sa.text(
            f"""
            UPDATE {RECONCILIATIONS_TABLE}
            SET organization_id = :org, run_type = :run_type, billing_period_start = :period_start,
                dag_id = :dag_id, dag_run_id = :dag_run_id, checked_at = clock_timestamp(), ok = :ok,
                checks = CAST(:checks AS jsonb)
            WHERE invoice_run_id = :id
            """
        ),
        {
            "id": result.invoice_run_id,
            "org": result.organization_id,
            "run_type": result.run_type,
            "period_start": result.billing_period_start,
            "dag_id": result.dag_id,
            "dag_run_id": result.dag_run_id,
            "ok": result.ok,
            "checks": json.dumps([asdict(c) for c in result.checks]),
        },
    )


def _offending(check: str, run_type: str) -> str:
    """The check's statement: one row, (count, the first :max_ids offending ids)."""
    offending = _COUNTS[RunType(run_type)] if check == COUNTS else _OFFENDING[check]
    return f"""
        WITH offending AS ({offending})
        SELECT count(*) AS count, (array_agg(id ORDER BY id))[1:CAST(:max_ids AS integer)] AS ids
        FROM (SELECT DISTINCT id FROM offending) o
    """


# The lease ids the run's errors name (a lease skipped or failed with its reason).
_NAMED_LEASES = """
    SELECT CAST(e->>'lease_id' AS bigint) AS lease_id
    FROM invoice_runs r CROSS JOIN LATERAL jsonb_array_elements(r.errors) e
    WHERE r.id = :run_id AND e->>'lease_id' IS NOT NULL
"""

# A row written by a transaction in [started_xid, ended_xid): modulo 2^32, as PostgreSQL's own xids
# wrap; xids below 3 are special (2: frozen, i.e. written long before).
_WRITTEN_DURING_RUN = """
    CAST(CAST({row}.xmin AS text) AS bigint) >= 3
    AND (CAST(CAST({row}.xmin AS text) AS bigint) - :started_xid + :space) % :space
        < (:ended_xid - :started_xid + :space) % :space
"""

_OFFENDING = {
    # One pass: the billable leases against the period's invoices per lease, in a FULL JOIN, which
    # PostgreSQL runs only as a hash or merge join. (NOT EXISTS against the leases, planned from the
    # stale statistics of invoices just written, ran as a nested loop: 52 s at 20,000 leases.)
    RENT_COVERAGE: f"""
        WITH invoiced AS (
            SELECT lease_id, count(*) AS invoices, bool_or(status = :draft) AS has_draft FROM invoices
            WHERE organization_id = :org AND invoice_type = :invoice_type AND billing_period_start = :period_start
            GROUP BY lease_id
        )
        SELECT coalesce(s.lease_id, i.lease_id) AS id
        FROM ({RENT_LEASES_OF_PERIOD}) s FULL JOIN invoiced i ON i.lease_id = s.lease_id
        -- A billable lease with no invoice, not named in the errors: lost.
        WHERE (s.error IS NULL AND i.lease_id IS NULL AND s.lease_id NOT IN ({_NAMED_LEASES}))
           -- More than one invoice for a lease and period: doubled.
           OR i.invoices > 1
           -- A draft for a lease that is not billable for the period.
           OR (i.has_draft AND (s.lease_id IS NULL OR s.error IS NOT NULL))
    """,
    UTILITY_COVERAGE: f"""
        WITH due AS (
            SELECT s.id, s.lease_id, s.amount, s.period_start, s.period_end, s.invoice_line_id
            FROM utility_statements s
            WHERE s.organization_id = :org AND s.status = :finalized AND s.period_end <= :period_end
              AND (s.finalized_at IS NULL OR s.finalized_at <= :run_started_at)
        )
        -- Pending and not excused by the run's errors: lost. The errors name leases; a pending statement
        -- is excused when its lease is named and the reason covers it: the statement itself is bad
        -- (the engine's statement rules), the lease's invoice of the period is no longer a draft, or
        -- the lease failed as a whole (it has no invoice of the period).
        SELECT d.id FROM due d
        WHERE d.invoice_line_id IS NULL
          AND NOT (d.lease_id IN ({_NAMED_LEASES}) AND (
                d.amount IS NULL OR d.period_start IS NULL OR d.period_end IS NULL
                OR d.period_end < d.period_start
                OR NOT EXISTS (SELECT 1 FROM leases l WHERE l.id = d.lease_id AND l.organization_id = :org)
                OR NOT EXISTS (
                    SELECT 1 FROM invoices i
                    WHERE i.lease_id = d.lease_id AND i.invoice_type = :invoice_type
                      AND i.billing_period_start = :period_start AND i.status = :draft)))
        UNION ALL
        -- Linked to a line that does not bill it for its amount.
        SELECT d.id FROM due d LEFT JOIN invoice_lines l ON l.id = d.invoice_line_id
        WHERE d.invoice_line_id IS NOT NULL
          AND (l.id IS NULL OR l.line_type <> :utility_line OR l.source_id <> d.id OR l.amount <> d.amount)
        UNION ALL
        -- Billed on more than one line.
        SELECT d.id FROM due d JOIN invoice_lines l ON l.source_id = d.id AND l.line_type = :utility_line
        GROUP BY d.id HAVING count(*) > 1
        UNION ALL
        -- Sharing its line with another statement.
        SELECT d.id FROM due d JOIN utility_statements o ON o.invoice_line_id = d.invoice_line_id AND o.id <> d.id
    """,
    # The lines of the drafts in one index scan for all their ids (= ANY), summed per invoice, then a
    # FULL JOIN (hash or merge) to the drafts. (A join of the drafts to their lines, planned from the
    # stale statistics of rows just written, probed the lines once per invoice: 3 s at 200,000.)
    TOTALS: """
        WITH drafts AS MATERIALIZED (
            SELECT i.id, i.subtotal, i.total FROM invoices i
            WHERE i.organization_id = :org AND i.invoice_type = :invoice_type
              AND i.billing_period_start = :period_start AND i.status = :draft
        ),
        lines AS (
            SELECT l.invoice_id, coalesce(sum(l.amount), 0) AS amount FROM invoice_lines l
            WHERE l.invoice_id = ANY(ARRAY(SELECT id FROM drafts))
            GROUP BY l.invoice_id
        )
        -- No line (no row in `lines`), or totals that are not the sum of the lines. (Every row of
        -- `lines` has its draft; a condition strict on `d` would let PostgreSQL make this a LEFT JOIN,
        -- which it may plan as a nested loop over the aggregate: minutes at 200,000.)
        SELECT d.id FROM drafts d FULL JOIN lines l ON l.invoice_id = d.id
        WHERE l.invoice_id IS NULL OR d.subtotal IS DISTINCT FROM l.amount OR d.total IS DISTINCT FROM l.amount
    """,
    HANDS_OFF: f"""
        SELECT i.id FROM invoices i
        WHERE i.organization_id = :org AND i.status <> :draft AND {_WRITTEN_DURING_RUN.format(row="i")}
        UNION ALL
        -- The lines of those invoices by their ids (= ANY, one index scan): a join was planned as a
        -- scan of every organization's lines.
        SELECT l.invoice_id FROM invoice_lines l
        WHERE l.invoice_id = ANY(ARRAY(
                SELECT i.id FROM invoices i WHERE i.organization_id = :org AND i.status <> :draft))
          AND {_WRITTEN_DURING_RUN.format(row="l")}
    """,
    # Per run type below (_COUNTS).
}

_COUNTS = {
    RunType.MONTHLY_RENT: f"""
        -- The invoices of billable leases: the pairs of a FULL JOIN (a hash or merge join, as in
        -- rent_coverage) that have both sides.
        WITH invoiced AS (
            SELECT count(*) FILTER (WHERE i.lease_id IS NOT NULL AND s.lease_id IS NOT NULL AND s.error IS NULL)
                   AS invoices
            FROM ({RENT_LEASES_OF_PERIOD}) s
            FULL JOIN (
                SELECT lease_id FROM invoices
                WHERE organization_id = :org AND invoice_type = :invoice_type AND billing_period_start = :period_start
            ) i ON i.lease_id = s.lease_id
        )
        SELECT r.id FROM invoice_runs r, invoiced
        WHERE r.id = :run_id
          AND (r.total_leases <> r.success_count + r.skipped_count + r.failure_count
               OR r.success_count + r.skipped_count <> invoiced.invoices
               OR r.failure_count <> (SELECT count(DISTINCT lease_id) FROM ({_NAMED_LEASES}) n))
    """,
    RunType.UTILITY: f"""
        SELECT r.id FROM invoice_runs r
        WHERE r.id = :run_id
          AND (r.total_leases <> r.success_count + r.skipped_count + r.failure_count
               -- A lease may be billed and named (one bad statement among good ones): at least.
               OR r.skipped_count + r.failure_count > (SELECT count(DISTINCT lease_id) FROM ({_NAMED_LEASES}) n))
    """,
}
