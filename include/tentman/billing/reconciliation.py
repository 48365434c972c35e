"""Reconciliation: after a run, prove what it billed for one organization, with set-based SQL over
that organization's rows of the period. docs/billing-rules.md, "Reconciliation", says what an
operator does with a violation.

The checks (CHECKS), each a verdict and, for a violation, the offending ids (the first MAX_IDS and
a count):

- `rent_coverage` (rent runs): every lease billable for the period — the rent engine's own rule,
  tentman.billing.rent.RENT_LEASES_OF_PERIOD — has a rent invoice for the period in any status, or
  is named in the run's `invoice_runs.errors`; and no draft rent invoice of the period is for a lease
  that is not billable. (It has at most one: the contract's unique key
  `invoices_one_per_lease_type_period`, which every run checks before it starts.) Ids: leases.
- `utility_coverage` (utility runs): every finalized statement of the organization the run should
  have billed (finalized by the time the run started, ending by the period's end; still pending, or
  linked to a utility line of the period's invoices: one billed on an earlier period's invoice is
  that period's to reconcile) is linked to a utility line that bills it (its `source_id`) for the
  statement's amount, or its lease is named in the errors (the utility engine's rule for a bad
  statement, tentman.billing.utility.UTILITY_STATEMENT_ERROR, among the reasons); and no line of the
  period is linked from two statements. (No statement is on two lines: the
  contract's unique key `invoice_lines_utility_statement_once`.) Ids: statements.
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

The checks share one read of the organization's rows of the period, staged in temporary tables
(_stage) as the engines stage theirs; docs/scaling.md, "The cost of reconciliation", has the cost.
The checks are stated twice, in SQL of two shapes with the same verdicts: for one organization
(reconcile_invoice_run, tuned for hundreds of thousands of rows) and for a batch of small ones
(reconcile_invoice_runs, each statement keyed by organization, at the end of this module).
tests/runs/test_reconciliation.py runs every scenario through both.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from sqlalchemy.engine import Connection

from tentman.billing.periods import BillingPeriod
from tentman.billing.rent import RENT_LEASE_BINDS, RENT_LEASES_OF_PERIOD, rent_leases_of_period
from tentman.billing.staging import analyze_staging, use_staging_settings
from tentman.billing.timing import StageTimings, stage_clock
from tentman.billing.utility import UTILITY_STATEMENT_ERROR
from tentman.db import execute
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
# The name the staging of the rows the checks share is timed under (StageTimings), before the checks'.
STAGE = "stage"
CHECKS_OF_RUN = {
    RunType.MONTHLY_RENT: (RENT_COVERAGE, TOTALS, HANDS_OFF, COUNTS),
    RunType.UTILITY: (UTILITY_COVERAGE, TOTALS, HANDS_OFF, COUNTS),
}
# The statuses of an organization's row that say the run billed it.
RECONCILED_STATUSES = (RunStatus.COMPLETED, RunStatus.COMPLETED_WITH_ERRORS)
MAX_IDS = 100
# The work memory of each of the reconciliation's sorts and hashes (one transaction at a time).
RECONCILIATION_WORK_MEM = "64MB"
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

    @classmethod
    def of_run(cls, run, checks: list[CheckResult]) -> Reconciliation:
        """The result for `run`, a row of `invoice_runs` (its id, organization, type, period, DAG run)."""
        return cls(
            run.id,
            run.organization_id,
            run.run_type,
            run.billing_period_start.isoformat(),
            run.dag_id,
            run.dag_run_id,
            checks,
        )


# The current transaction's id as the run windows store it: modulo :space (_XID_SPACE), as the xmin
# of the rows _WRITTEN_DURING_RUN compares it with.
_CURRENT_XID = "CAST(CAST(pg_current_xact_id() AS text) AS bigint) % :space"
# The windows of the runs :run_ids end with this transaction, unless an earlier reconciliation ended
# them; a run of an earlier release gets a window with no start (its hands_off is unchecked).
_END_RUN_WINDOWS = f"""
    INSERT INTO {RECONCILIATIONS_TABLE} AS r (invoice_run_id, ended_xid)
    SELECT id, {_CURRENT_XID} FROM unnest(CAST(:run_ids AS bigint[])) id
    ON CONFLICT (invoice_run_id) DO UPDATE SET ended_xid = coalesce(r.ended_xid, excluded.ended_xid)
"""

# `hands_off` for a run opened by a release that recorded no window.
_UNCHECKED_HANDS_OFF = CheckResult(HANDS_OFF, True, note="no run window recorded (a run of an earlier release)")


def record_run_start(conn: Connection, invoice_run_id: int) -> None:
    """Note the transaction that opens an organization's run: the start of the `hands_off` window.
    Each attempt (a retry, a cleared task) starts a new window and forgets the last verdict: what
    an earlier attempt wrote was rolled back or is written again by this one."""
    execute(
        conn,
        f"""
            INSERT INTO {RECONCILIATIONS_TABLE} (invoice_run_id, started_xid)
            VALUES (:id, {_CURRENT_XID})
            ON CONFLICT (invoice_run_id) DO UPDATE
            SET started_xid = excluded.started_xid, ended_xid = NULL, checked_at = NULL, ok = NULL, checks = NULL
            """,
        {"id": invoice_run_id, "space": _XID_SPACE},
    )


def invoice_runs_to_reconcile(conn: Connection, *, dag_id: str, dag_run_id: str) -> list[int]:
    """The invoice runs of a DAG run that billed their organization, by organization id."""
    return list(
        execute(
            conn,
            """
                SELECT id FROM invoice_runs
                WHERE dag_id = :dag_id AND dag_run_id = :dag_run_id AND status = ANY(:statuses)
                ORDER BY organization_id
                """,
            {"dag_id": dag_id, "dag_run_id": dag_run_id, "statuses": [s.value for s in RECONCILED_STATUSES]},
        ).scalars()
    )


def latest_invoice_runs(
    conn: Connection, *, run_type: str, period: BillingPeriod, organization_id: int | None = None
) -> list[int]:
    """Each organization's latest invoice run that billed it for `run_type` and `period`."""
    return list(
        execute(
            conn,
            """
                SELECT DISTINCT ON (organization_id) id FROM invoice_runs
                WHERE run_type = :run_type AND billing_period_start = :period_start AND status = ANY(:statuses)
                  AND (CAST(:org AS bigint) IS NULL OR organization_id = :org)
                ORDER BY organization_id, started_at DESC, id DESC
                """,
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
    # One round trip for the transaction's settings (an organization of a few leases costs its round
    # trips, not its rows). The checks read every row of the organization's period once; their
    # estimates, from statistics of rows the run has just written, are priced high enough to
    # JIT-compile the statements, which cost more than running them (utility_coverage: 1.6 s of JIT
    # for 0.1 s of work at 20,000). Their hash joins and aggregates hold one row per lease or statement
    # of the organization: with the server's default work memory (4 MB) they spilled to disk in
    # batches at 200,000. `totals` sums the lines per invoice: streamed from the lines' index in
    # invoice order, half the time of a hash of 200,000 numeric sums (86 MB), which the planner
    # preferred.
    execute(conn, _SETTINGS, {"work_mem": RECONCILIATION_WORK_MEM})
    # The run, with the end of its `hands_off` window.
    run = execute(
        conn,
        f"""
            WITH run_window AS ({_END_RUN_WINDOWS} RETURNING started_xid, ended_xid)
            SELECT i.*, w.started_xid, w.ended_xid,
                   -- The size of the table the utility staging either probes or scans (_stage).
                   (SELECT c.reltuples FROM pg_class c WHERE c.oid = CAST('utility_statements' AS regclass))
                       AS statements_estimate
            FROM invoice_runs i, run_window w WHERE i.id = :id
            """,
        {"id": invoice_run_id, "run_ids": [invoice_run_id], "space": _XID_SPACE},
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
        "started_xid": run.started_xid,
        "ended_xid": run.ended_xid,
        "space": _XID_SPACE,
        "max_ids": MAX_IDS,
        "statements_estimate": run.statements_estimate,
        # RENT_LEASES_OF_PERIOD's names.
        "organization_id": run.organization_id,
        **RENT_LEASE_BINDS,
    }
    # The rows the checks share, read once (_stage): the organization's invoices of the period, and
    # its leases of the period (rent) or its statements due (utility).
    use_staging_settings(conn)
    with clock.stage(STAGE):
        _stage(conn, RunType(run.run_type), params)
    checks = []
    for check in CHECKS_OF_RUN[RunType(run.run_type)]:
        if check == HANDS_OFF and run.started_xid is None:
            checks.append(_UNCHECKED_HANDS_OFF)
            continue
        with clock.stage(check):
            if check in _MERGE_PASSES:
                with _merge_joins(conn):
                    execute(conn, _MERGE_PASSES[check], params)
            with _merge_joins(conn) if check in _MERGE_PLANNED else contextlib.nullcontext():
                found = execute(conn, _offending(check, run.run_type), params).one()._asdict()
        count, ids = found.pop("count"), found.pop("ids")
        params.update(found)  # what a later check reuses (rent_coverage: `invoiced`, for counts)
        checks.append(CheckResult(check, count == 0, count, list(ids or [])))
    result = Reconciliation.of_run(run, checks)
    # Dropped now rather than at commit: a caller may reconcile several runs in one transaction.
    execute(conn, f"DROP TABLE IF EXISTS {', '.join(_STAGED_TABLES[RunType(run.run_type)])}")
    _store(conn, [result])
    return result


_SETTINGS = (
    "SELECT set_config('jit', 'off', true), set_config('work_mem', :work_mem, true), "
    "set_config('enable_hashagg', 'off', true)"
)


def _store(conn: Connection, results: list[Reconciliation]) -> None:
    """Each result's verdict on its run's row, in one statement."""
    execute(
        conn,
        f"""
            UPDATE {RECONCILIATIONS_TABLE} r
            SET organization_id = v.organization_id, run_type = v.run_type,
                billing_period_start = CAST(v.billing_period_start AS date), dag_id = v.dag_id,
                dag_run_id = v.dag_run_id, checked_at = clock_timestamp(), ok = v.ok, checks = CAST(v.checks AS jsonb)
            FROM unnest(CAST(:ids AS bigint[]), CAST(:organization_ids AS bigint[]), CAST(:run_types AS text[]),
                        CAST(:period_starts AS text[]), CAST(:dag_ids AS text[]), CAST(:dag_run_ids AS text[]),
                        CAST(:oks AS boolean[]), CAST(:checks AS text[]))
                AS v(id, organization_id, run_type, billing_period_start, dag_id, dag_run_id, ok, checks)
            WHERE r.invoice_run_id = v.id
            """,
        {
            "ids": [r.invoice_run_id for r in results],
            "organization_ids": [r.organization_id for r in results],
            "run_types": [r.run_type for r in results],
            "period_starts": [r.billing_period_start for r in results],
            "dag_ids": [r.dag_id for r in results],
            "dag_run_ids": [r.dag_run_id for r in results],
            "oks": [r.ok for r in results],
            "checks": [json.dumps([asdict(c) for c in r.checks]) for r in results],
        },
    )


# Planner settings off while a pass over two id-ordered ranges runs (_merge_joins).
_MERGE_ONLY = ("enable_nestloop", "enable_hashjoin", "enable_bitmapscan")


@contextlib.contextmanager
def _merge_joins(conn: Connection) -> Iterator[None]:
    """Plan the statements run inside as merge joins of ordered index scans, then restore the settings.

    The passes that need it (_MERGE_PASSES, _MERGE_PLANNED) join two id ranges that the run has just
    written, both readable in id order from an index of the contract. The application's statistics
    do not know those rows yet (the range is estimated at a few hundred rows, or one), so the planner
    picks one index descent per row (200,000 of them) or a bitmap scan, a sort and a hash: 2× the time
    of walking both indexes side by side, at 200,000 statements (docs/scaling.md, "The cost of
    reconciliation"). Only for those statements: elsewhere a nested loop is the right plan (a few
    pending statements against their leases).
    """
    # Two round trips: the settings read and turned off in one statement (read first: the CTE is
    # materialized before the outer query's set_config calls run), restored in another.
    saved = execute(conn, _MERGE_JOINS_ON).one()
    try:
        yield
    finally:
        execute(conn, _MERGE_JOINS_RESTORED, {name: getattr(saved, name) for name in _MERGE_ONLY})


_MERGE_JOINS_ON = "WITH saved AS MATERIALIZED (SELECT {read}) SELECT {names}, {off} FROM saved".format(
    read=", ".join(f"current_setting('{name}') AS {name}" for name in _MERGE_ONLY),
    names=", ".join(_MERGE_ONLY),
    off=", ".join(f"set_config('{name}', 'off', true)" for name in _MERGE_ONLY),
)
_MERGE_JOINS_RESTORED = "SELECT " + ", ".join(f"set_config('{name}', :{name}, true)" for name in _MERGE_ONLY)


def _offending(check: str, run_type: str) -> str:
    """The check's statement: one row, (count, the first :max_ids offending ids), and for a few checks
    a figure a later check reuses (_FIGURES)."""
    if check in _FIGURES:
        return _FIGURES[check]
    return _count_and_ids(_COUNTS[RunType(run_type)] if check == COUNTS else _OFFENDING[check])


def _count_and_ids(offending: str, *, by_organization: bool = False) -> str:
    """(count, the first :max_ids ids) of the distinct ids `offending` yields; by_organization: per
    organization of a batch, `offending` then yielding (organization_id, id)."""
    key = "organization_id, " if by_organization else ""
    return f"""
        WITH offending AS ({offending})
        SELECT {key}count(*) AS count, (array_agg(id ORDER BY id))[1:CAST(:max_ids AS integer)] AS ids
        FROM (SELECT DISTINCT {key}id FROM offending) o
        {"GROUP BY organization_id" if by_organization else ""}
    """


# The lease ids the run's errors name (a lease skipped or failed with its reason).
_NAMED_LEASES = """
    SELECT CAST(e->>'lease_id' AS bigint) AS lease_id
    FROM invoice_runs r CROSS JOIN LATERAL jsonb_array_elements(r.errors) e
    WHERE r.id = :run_id AND e->>'lease_id' IS NOT NULL
"""

# A row written by a transaction in [started_xid, ended_xid): modulo 2^32, as PostgreSQL's own xids
# wrap; xids below 3 are special (2: frozen, i.e. written long before).
# ({started} and {ended}: the window's bounds, the binds of one run or the columns of a batch's runs.)
_WRITTEN_DURING_RUN = """
    CAST(CAST({row}.xmin AS text) AS bigint) >= 3
    AND (CAST(CAST({row}.xmin AS text) AS bigint) - {started} + :space) % :space
        < ({ended} - {started} + :space) % :space
"""
_RUN_WINDOW = {"started": ":started_xid", "ended": ":ended_xid"}

# The rows the checks share, staged once per reconciliation and analyzed (analyze_staging), as the
# engines stage theirs: each check then reads a temporary table with its own statistics instead of
# the application's tables again, whose statistics of the rows the run has just written are stale.
_STAGE_INVOICES = """
CREATE TEMP TABLE tm_recon_invoice ON COMMIT DROP AS
SELECT i.id, i.lease_id, i.status, i.subtotal, i.total FROM invoices i
WHERE i.organization_id = :org AND i.invoice_type = :invoice_type AND i.billing_period_start = :period_start
"""
# rent: the rent engine's rule (RENT_LEASES_OF_PERIOD), read once for rent_coverage and counts.
_STAGE_LEASES = f"""
CREATE TEMP TABLE tm_recon_lease ON COMMIT DROP AS
SELECT s.lease_id, s.error FROM ({RENT_LEASES_OF_PERIOD}) s
"""
# utility: the organization's statements the run should have billed: finalized by the time the run
# started and ending by the period's end, still pending or billed on one of the period's invoices.
# (One billed on an earlier period's invoice was reconciled by its own run: `utility_coverage` names a
# statement on a misused line only when the line is one of the period's.) Read one of two ways, by the
# organization's size (_stage, STATEMENT_PROBE_ROWS):
# - by index (_STAGE_STATEMENTS_BY_LINK): the pending ones by the contract's index of pending
#   statements, the billed ones by their link (`utility_statements_invoice_line_idx`) from the period's
#   lines. Its cost follows the organization's rows of the period, not the whole table: a scan of every
#   organization's statements of every month, once per organization (no index of the contract leads
#   with `organization_id` for billed statements), was most of a 2,000-organization run's
#   reconciliation. The application's statistics do not know the lines and links the run has just
#   written, so the planner may take any join for a single row; every table it could loop over on the
#   inner side is probed by an index (the staged invoices by _INDEX_INVOICES), so that no misestimate
#   makes the staging quadratic (with `invoice_line_id IS NOT NULL` as the statements' index
#   condition, the join read every linked statement again for each line: 14 minutes at 200,000).
# - by one scan (_STAGE_STATEMENTS_BY_SCAN): the organization's statements due, every month's, for an
#   organization that is a large part of the table, where a probe per statement costs more.
# (The status is written in, not bound: the planner uses a partial index only where it sees the value.)
# ({organization} and {run_started_at}: the binds of one run, or the columns of a batch's runs.)
_STATEMENT_DUE_OF = f"""
    s.organization_id = {{organization}} AND s.status = '{StatementStatus.FINALIZED}' AND s.period_end <= :period_end
    AND (s.finalized_at IS NULL OR s.finalized_at <= {{run_started_at}})
"""
_STATEMENT_DUE = _STATEMENT_DUE_OF.format(organization=":org", run_started_at=":run_started_at")
_STATEMENT_COLUMNS = "s.id, s.organization_id, s.lease_id, s.amount, s.period_start, s.period_end, s.invoice_line_id"
_INDEX_INVOICES = "CREATE INDEX ON tm_recon_invoice (id)"
_STAGE_STATEMENTS_BY_LINK = f"""
CREATE TEMP TABLE tm_recon_statement ON COMMIT DROP AS
SELECT {_STATEMENT_COLUMNS} FROM utility_statements s
WHERE s.invoice_line_id IS NULL AND {_STATEMENT_DUE}
UNION ALL
SELECT {_STATEMENT_COLUMNS} FROM tm_recon_invoice i
JOIN invoice_lines l ON l.invoice_id = i.id AND l.line_type = '{LineType.UTILITY}'
JOIN utility_statements s ON s.invoice_line_id = l.id
WHERE {_STATEMENT_DUE}
"""
_STAGE_STATEMENTS_BY_SCAN = f"""
CREATE TEMP TABLE tm_recon_statement ON COMMIT DROP AS
SELECT {_STATEMENT_COLUMNS} FROM utility_statements s WHERE {_STATEMENT_DUE}
"""
# A statement probed by its link costs about what a scan costs for this many rows of the table
# (200,000 statements of one organization: 475 ms of probes against 75 ms for the scan). The staging
# probes when the organization's invoices of the period, times this, are fewer than the table's rows
# (its planner estimate); a table never analyzed is scanned.
STATEMENT_PROBE_ROWS = 6
_STAGE_ANALYZED = {
    "tm_recon_invoice": ("id", "lease_id", "status"),
    "tm_recon_lease": ("lease_id", "error"),
    "tm_recon_statement": ("id", "lease_id", "invoice_line_id"),
}


def _stage(conn: Connection, run_type: RunType, params: dict) -> None:
    """Stage the rows the checks share, each table analyzed, then put the id ranges the checks read
    (_ID_RANGES) into `params`."""
    invoices = execute(conn, _STAGE_INVOICES, params).rowcount
    _analyze(conn, "tm_recon_invoice")
    if run_type == RunType.MONTHLY_RENT:
        execute(conn, _STAGE_LEASES, params)
        _analyze(conn, "tm_recon_lease")
    else:
        if invoices * STATEMENT_PROBE_ROWS < params["statements_estimate"]:
            execute(conn, _INDEX_INVOICES)
            execute(conn, _STAGE_STATEMENTS_BY_LINK, params)
        else:
            execute(conn, _STAGE_STATEMENTS_BY_SCAN, params)
        _analyze(conn, "tm_recon_statement")
    params.update(execute(conn, _ID_RANGES[run_type], params).one()._asdict())


def _analyze(conn: Connection, table: str) -> None:
    execute(conn, analyze_staging(table, *_STAGE_ANALYZED[table]))


_STAGED_TABLES = {
    RunType.MONTHLY_RENT: ("tm_recon_invoice", "tm_recon_lease"),
    RunType.UTILITY: ("tm_recon_invoice", "tm_recon_statement", "tm_recon_misused_line"),
}
# The ids the checks read from the application's tables lie in narrow ranges (one run writes them
# together): they are read with one range scan of an index, bound to the real ids so that the planner
# prices it, instead of a scan of every organization's rows or an index descent per id. `totals`: the
# drafts'. `utility_coverage`: the lines the statements are linked to.
_ID_RANGES = {
    RunType.MONTHLY_RENT: """
        SELECT first_draft_id, last_draft_id
        FROM (SELECT min(id) AS first_draft_id, max(id) AS last_draft_id FROM tm_recon_invoice WHERE status = :draft) d
    """,
    RunType.UTILITY: """
        SELECT first_draft_id, last_draft_id, first_line_id, last_line_id
        FROM (SELECT min(id) AS first_draft_id, max(id) AS last_draft_id FROM tm_recon_invoice WHERE status = :draft) d,
             (SELECT min(invoice_line_id) AS first_line_id, max(invoice_line_id) AS last_line_id
              FROM tm_recon_statement) s
    """,
}

# Passes a check makes first, planned as merge joins (_merge_joins). `utility_coverage`: every statement
# linked to a line of the range (any organization's), each against its line, both ranges walked in id
# order side by side. A line is misused when a statement on it is not the one it bills for that amount;
# a statement on a misused line is either that statement or shares its line with it (of two statements
# on one line, the line bills at most one, its `source_id`).
_MERGE_PASSES = {
    UTILITY_COVERAGE: """
        CREATE TEMP TABLE tm_recon_misused_line ON COMMIT DROP AS
        SELECT o.invoice_line_id, l.invoice_id FROM utility_statements o
        LEFT JOIN invoice_lines l ON l.id = o.invoice_line_id AND l.id BETWEEN :first_line_id AND :last_line_id
        WHERE o.invoice_line_id BETWEEN :first_line_id AND :last_line_id
          AND (l.id IS NULL OR l.line_type <> :utility_line OR l.source_id <> o.id OR l.amount <> o.amount)
    """,
}
# Checks whose own statement is planned so: `totals`, the drafts' lines summed in the order of their
# index and merged with the staged drafts (sorted) instead of sorted, summed and hashed.
_MERGE_PLANNED = {TOTALS}

_OFFENDING = {
    # RENT_COVERAGE: in _FIGURES below (it also counts the billable leases invoiced, for `counts`).
    # A statement on more than one utility line cannot be: the contract's unique key
    # (invoice_lines_utility_statement_once) forbids it.
    UTILITY_COVERAGE: f"""
        -- Pending and not excused by the run's errors: lost. The errors name leases; a pending statement
        -- is excused when its lease is named and the reason covers it: the statement itself is bad
        -- (the engine's rule, UTILITY_STATEMENT_ERROR), the lease's invoice of the period is no longer
        -- a draft, or the lease failed as a whole (it has no invoice of the period).
        SELECT s.id FROM tm_recon_statement s LEFT JOIN leases l ON l.id = s.lease_id
        WHERE s.invoice_line_id IS NULL
          AND NOT (s.lease_id IN ({_NAMED_LEASES}) AND (
                ({UTILITY_STATEMENT_ERROR}) IS NOT NULL
                OR NOT EXISTS (SELECT 1 FROM tm_recon_invoice i WHERE i.lease_id = s.lease_id AND i.status = :draft)))
        UNION ALL
        -- Linked to a line of the period that does not bill it for its amount, or sharing such a line
        -- with another statement (of any organization): the lines misused, found in one pass before
        -- (_MERGE_PASSES). (A line of an earlier period is its own run's to reconcile.)
        SELECT s.id FROM tm_recon_statement s
        WHERE s.invoice_line_id IN (
            SELECT m.invoice_line_id FROM tm_recon_misused_line m
            WHERE m.invoice_id IS NULL OR m.invoice_id IN (SELECT i.id FROM tm_recon_invoice i))
    """,
    # The lines of the drafts' id range, summed per invoice in one scan of their index (lines of other
    # invoices in the range are summed too, and left aside by the join), against the staged drafts.
    # (The lines by the drafts' ids, `= ANY`, took one index descent per draft; joined to the drafts
    # before the sum, a hash of every line.)
    TOTALS: """
        WITH lines AS (
            SELECT l.invoice_id, sum(l.amount) AS amount FROM invoice_lines l
            WHERE l.invoice_id BETWEEN :first_draft_id AND :last_draft_id
            GROUP BY l.invoice_id
        )
        -- No line (no row in `lines`), or totals that are not the sum of the lines.
        SELECT d.id FROM tm_recon_invoice d LEFT JOIN lines l ON l.invoice_id = d.id
        WHERE d.status = :draft
          AND (l.invoice_id IS NULL OR d.subtotal IS DISTINCT FROM l.amount OR d.total IS DISTINCT FROM l.amount)
    """,
    # The organization's settled invoices read once (their ids and row versions), then their lines by
    # those ids (= ANY, one index scan: a join was planned as a scan of every organization's lines).
    HANDS_OFF: f"""
        WITH settled AS MATERIALIZED (
            SELECT i.id, i.xmin AS xmin FROM invoices i WHERE i.organization_id = :org AND i.status <> :draft
        )
        SELECT i.id FROM settled i WHERE {_WRITTEN_DURING_RUN.format(row="i", **_RUN_WINDOW)}
        UNION ALL
        SELECT l.invoice_id FROM invoice_lines l
        WHERE l.invoice_id = ANY(ARRAY(SELECT id FROM settled)) AND {_WRITTEN_DURING_RUN.format(row="l", **_RUN_WINDOW)}
    """,
    # Per run type below (_COUNTS).
}

# Checks that also return a figure a later check reuses, in one pass. `rent_coverage`: the billable
# leases against the period's invoices, one FULL JOIN, which also counts the billable leases that have
# an invoice (`invoiced`), for `counts`, instead of joining the two staged tables again. More than one
# invoice per lease and period cannot be: the contract's unique key (invoices_one_per_lease_type_period),
# which every run checks before it starts, forbids it.
_FIGURES = {
    RENT_COVERAGE: f"""
        -- The offending ids gathered unsorted, then sorted alone (a sorted aggregate over the pairs
        -- sorted all 200,000 of them).
        SELECT (SELECT count(DISTINCT id) FROM unnest(p.offending) id) AS count,
               (SELECT (array_agg(DISTINCT id ORDER BY id))[1:CAST(:max_ids AS integer)]
                FROM unnest(p.offending) id) AS ids,
               p.invoiced
        FROM (
        SELECT array_agg(id) FILTER (WHERE offending) AS offending, count(*) FILTER (WHERE invoiced) AS invoiced
        FROM (
            SELECT coalesce(s.lease_id, i.lease_id) AS id,
                   -- A billable lease with no invoice, not named in the errors: lost.
                   (s.error IS NULL AND i.lease_id IS NULL AND s.lease_id NOT IN ({_NAMED_LEASES}))
                   -- A draft for a lease that is not billable for the period.
                   OR (i.status = :draft AND (s.lease_id IS NULL OR s.error IS NOT NULL)) AS offending,
                   s.lease_id IS NOT NULL AND s.error IS NULL AND i.lease_id IS NOT NULL AS invoiced
            FROM tm_recon_lease s FULL JOIN tm_recon_invoice i ON i.lease_id = s.lease_id
        ) pairs) p
    """,
}

_COUNTS = {
    # :invoiced, the billable leases that have an invoice of the period: counted by rent_coverage (_FIGURES).
    RunType.MONTHLY_RENT: f"""
        SELECT r.id FROM invoice_runs r
        WHERE r.id = :run_id
          AND (r.total_leases <> r.success_count + r.skipped_count + r.failure_count
               OR r.success_count + r.skipped_count <> :invoiced
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


# ---------------------------------------------------------------------------------------------------
# Several small organizations at once (reconcile_invoice_runs).
#
# An organization of a few leases costs its statements, not its rows: alone, its reconciliation is
# some 17 round trips, two temporary tables and a commit, about 2 ms of this process's CPU and 5 ms of
# the server's, whatever its size; at 2,000 organizations that was most of a run's last task
# (docs/scaling.md, "The cost of reconciliation"). The invoice runs of at most BATCH_RUN_LEASES leases
# are therefore reconciled together, up to BATCH_LEASES leases (and BATCH_RUNS runs) in one
# transaction: the same checks over the same rows, each statement keyed by organization (one invoice
# run per organization in a batch), the verdicts stored together. A larger run is reconciled alone, by
# the statements above, which are tuned for an organization of hundreds of thousands of rows.
# tests/runs/test_reconciliation.py runs every scenario both ways.
BATCH_RUN_LEASES = 1_000
BATCH_LEASES = 20_000
BATCH_RUNS = 250


@dataclass(frozen=True)
class ReconciliationUnit:
    """Invoice runs reconciled in one transaction: a batch of small ones (reconcile_invoice_runs), or
    one large run alone (reconcile_invoice_run)."""

    invoice_run_ids: list[int]
    batched: bool


def reconciliation_units(conn: Connection, invoice_run_ids: list[int]) -> list[ReconciliationUnit]:
    """`invoice_run_ids` grouped into the units reconciled in one transaction each: every run of more
    than BATCH_RUN_LEASES leases alone (largest first: the longest units start first), then the small
    ones in batches of one run type and period, in the order given."""
    runs = execute(
        conn,
        """
            SELECT id, organization_id, run_type, billing_period_start, coalesce(total_leases, 0) AS total_leases
            FROM invoice_runs WHERE id = ANY(:ids) ORDER BY array_position(CAST(:ids AS bigint[]), id)
            """,
        {"ids": list(invoice_run_ids)},
    ).all()
    small = [run for run in runs if run.total_leases <= BATCH_RUN_LEASES]
    large = sorted((run for run in runs if run.total_leases > BATCH_RUN_LEASES), key=lambda run: -run.total_leases)
    units = [ReconciliationUnit([run.id], batched=False) for run in large]
    open_batches: dict[tuple, _Batch] = {}
    for run in small:
        key = (run.run_type, run.billing_period_start)
        batch = open_batches.setdefault(key, _Batch())
        if batch.run_ids and (
            len(batch.run_ids) >= BATCH_RUNS
            or batch.leases + run.total_leases > BATCH_LEASES
            or run.organization_id in batch.organization_ids
        ):
            units.append(ReconciliationUnit(batch.run_ids, batched=True))
            batch = open_batches[key] = _Batch()
        batch.run_ids.append(run.id)
        batch.organization_ids.add(run.organization_id)
        batch.leases += run.total_leases
    units.extend(ReconciliationUnit(batch.run_ids, batched=True) for batch in open_batches.values())
    return units


@dataclass
class _Batch:
    run_ids: list[int] = field(default_factory=list)
    organization_ids: set[int] = field(default_factory=set)
    leases: int = 0


def reconcile_invoice_runs(conn: Connection, invoice_run_ids: list[int]) -> list[Reconciliation]:
    """Run every check of each invoice run and store the verdicts (on the caller's transaction), for
    several runs of one run type and period, at most one per organization (reconciliation_units makes
    such batches); the results in the order of `invoice_run_ids`. The same checks, verdicts and ids
    as reconcile_invoice_run, for each."""
    if not invoice_run_ids:
        return []
    execute(conn, _SETTINGS, {"work_mem": RECONCILIATION_WORK_MEM})
    execute(conn, _END_RUN_WINDOWS, {"run_ids": list(invoice_run_ids), "space": _XID_SPACE})
    execute(conn, _STAGE_BATCH_RUNS, {"run_ids": list(invoice_run_ids)})
    runs = {run.id: run for run in execute(conn, _BATCH_RUNS).all()}
    kinds = {(run.run_type, run.billing_period_start, run.billing_period_end) for run in runs.values()}
    organizations = [run.organization_id for run in runs.values()]
    if len(kinds) != 1 or len(set(organizations)) != len(organizations) or set(runs) != set(invoice_run_ids):
        raise ValueError(
            f"invoice runs {sorted(invoice_run_ids)} are not one batch: a batch holds existing runs of one run type "
            f"and billing period (found {sorted(map(str, kinds))}), at most one per organization"
        )
    [(run_type, period_start, period_end)] = kinds
    run_type = RunType(run_type)
    params = {
        "organization_ids": organizations,
        "period_start": period_start,
        "period_end": period_end,
        "invoice_type": InvoiceType.RENT.value if run_type == RunType.MONTHLY_RENT else InvoiceType.UTILITY.value,
        "draft": InvoiceStatus.DRAFT.value,
        "utility_line": LineType.UTILITY.value,
        "space": _XID_SPACE,
        "max_ids": MAX_IDS,
        **RENT_LEASE_BINDS,
    }
    use_staging_settings(conn)
    for statement in _BATCH_STAGING[run_type]:
        execute(conn, statement, params)
    found: dict[str, dict[int, dict]] = {}
    for check in CHECKS_OF_RUN[run_type]:
        if check == COUNTS and run_type == RunType.MONTHLY_RENT:
            invoiced = found[RENT_COVERAGE]
            params["figure_organization_ids"] = list(invoiced)
            params["invoiced"] = [row["invoiced"] for row in invoiced.values()]
        rows = execute(conn, _batch_offending(check, run_type), params)
        found[check] = {row.organization_id: row._asdict() for row in rows}
    results = []
    for run_id in invoice_run_ids:
        run = runs[run_id]
        checks = []
        for check in CHECKS_OF_RUN[run_type]:
            if check == HANDS_OFF and run.started_xid is None:
                checks.append(_UNCHECKED_HANDS_OFF)
                continue
            row = found[check].get(run.organization_id, {"count": 0, "ids": None})
            checks.append(CheckResult(check, row["count"] == 0, row["count"], list(row["ids"] or [])))
        results.append(Reconciliation.of_run(run, checks))
    execute(conn, f"DROP TABLE IF EXISTS {', '.join(_BATCH_STAGED_TABLES)}")
    _store(conn, results)
    return results


def _batch_offending(check: str, run_type: RunType) -> str:
    """The check's statement over a batch: _offending's row for each organization, keyed by it."""
    if check in _BATCH_FIGURES:
        return _BATCH_FIGURES[check]
    offending = _BATCH_COUNTS[run_type] if check == COUNTS else _BATCH_OFFENDING[check]
    return _count_and_ids(offending, by_organization=True)


# The batch's runs with their windows; the other staged tables are the ones above, per organization.
_STAGE_BATCH_RUNS = f"""
CREATE TEMP TABLE tm_recon_batch_run ON COMMIT DROP AS
SELECT i.id, i.organization_id, i.run_type, i.billing_period_start, i.billing_period_end, i.started_at, i.dag_id,
       i.dag_run_id, i.total_leases, i.success_count, i.skipped_count, i.failure_count, i.errors,
       w.started_xid, w.ended_xid
FROM invoice_runs i JOIN {RECONCILIATIONS_TABLE} w ON w.invoice_run_id = i.id
WHERE i.id = ANY(:run_ids)
"""
_BATCH_RUNS = """
SELECT id, organization_id, run_type, billing_period_start, billing_period_end, dag_id, dag_run_id, started_xid
FROM tm_recon_batch_run
"""
_STAGE_BATCH_INVOICES = """
CREATE TEMP TABLE tm_recon_batch_invoice ON COMMIT DROP AS
SELECT i.organization_id, i.id, i.lease_id, i.status, i.subtotal, i.total FROM invoices i
WHERE i.organization_id = ANY(:organization_ids) AND i.invoice_type = :invoice_type
  AND i.billing_period_start = :period_start
"""
# The leases each run's errors name, by organization.
_STAGE_BATCH_NAMED_LEASES = """
CREATE TEMP TABLE tm_recon_batch_named ON COMMIT DROP AS
SELECT r.organization_id, CAST(e->>'lease_id' AS bigint) AS lease_id
FROM tm_recon_batch_run r CROSS JOIN LATERAL jsonb_array_elements(r.errors) e
WHERE e->>'lease_id' IS NOT NULL
"""
_STAGE_BATCH_LEASES = f"""
CREATE TEMP TABLE tm_recon_batch_lease ON COMMIT DROP AS
SELECT b.organization_id, s.lease_id, s.error
FROM ({rent_leases_of_period("l.organization_id = ANY(:organization_ids)")}) s JOIN leases b ON b.id = s.lease_id
"""
# The statements each run should have billed (_STATEMENT_DUE_OF), by index: the pending ones, and
# those linked to a utility line of the period's invoices.
_BATCH_STATEMENT_DUE = _STATEMENT_DUE_OF.format(organization="r.organization_id", run_started_at="r.started_at")
_STAGE_BATCH_STATEMENTS = f"""
CREATE TEMP TABLE tm_recon_batch_statement ON COMMIT DROP AS
SELECT {_STATEMENT_COLUMNS} FROM tm_recon_batch_run r JOIN utility_statements s ON s.organization_id = r.organization_id
WHERE s.invoice_line_id IS NULL AND {_BATCH_STATEMENT_DUE}
UNION ALL
SELECT {_STATEMENT_COLUMNS} FROM tm_recon_batch_invoice i
JOIN tm_recon_batch_run r ON r.organization_id = i.organization_id
JOIN invoice_lines l ON l.invoice_id = i.id AND l.line_type = '{LineType.UTILITY}'
JOIN utility_statements s ON s.invoice_line_id = l.id
WHERE {_BATCH_STATEMENT_DUE}
"""
# The lines the staged statements are linked to that some statement (of any organization) misuses:
# linked to a line that does not bill it for its amount (_MERGE_PASSES, for one organization).
_STAGE_BATCH_MISUSED_LINES = """
CREATE TEMP TABLE tm_recon_batch_misused_line ON COMMIT DROP AS
SELECT o.invoice_line_id, l.invoice_id FROM utility_statements o
LEFT JOIN invoice_lines l ON l.id = o.invoice_line_id
WHERE o.invoice_line_id = ANY(ARRAY(
        SELECT s.invoice_line_id FROM tm_recon_batch_statement s WHERE s.invoice_line_id IS NOT NULL))
  AND (l.id IS NULL OR l.line_type <> :utility_line OR l.source_id <> o.id OR l.amount <> o.amount)
"""
# What every batch stages first: its runs analyzed, its invoices, the leases its errors name.
_BATCH_SHARED_STAGING = (
    analyze_staging("tm_recon_batch_run", "id", "organization_id"),
    _STAGE_BATCH_INVOICES,
    analyze_staging("tm_recon_batch_invoice", "organization_id", "id", "lease_id", "status"),
    _STAGE_BATCH_NAMED_LEASES,
)
_BATCH_STAGING = {
    RunType.MONTHLY_RENT: (
        *_BATCH_SHARED_STAGING,
        _STAGE_BATCH_LEASES,
        analyze_staging("tm_recon_batch_lease", "organization_id", "lease_id", "error"),
    ),
    RunType.UTILITY: (
        *_BATCH_SHARED_STAGING,
        _STAGE_BATCH_STATEMENTS,
        analyze_staging("tm_recon_batch_statement", "id", "lease_id", "invoice_line_id"),
        _STAGE_BATCH_MISUSED_LINES,
    ),
}
_BATCH_STAGED_TABLES = (
    "tm_recon_batch_run",
    "tm_recon_batch_invoice",
    "tm_recon_batch_named",
    "tm_recon_batch_lease",
    "tm_recon_batch_statement",
    "tm_recon_batch_misused_line",
)
# (organization_id, lease_id) IN (...): NULL for a statement without a lease when its organization's
# errors name any lease, as `lease_id IN (...)` is for one organization.
_BATCH_NAMED = "SELECT n.organization_id, n.lease_id FROM tm_recon_batch_named n"
_BATCH_WINDOW = {"started": "w.started_xid", "ended": "w.ended_xid"}

_BATCH_OFFENDING = {
    UTILITY_COVERAGE: f"""
        SELECT s.organization_id, s.id FROM tm_recon_batch_statement s LEFT JOIN leases l ON l.id = s.lease_id
        WHERE s.invoice_line_id IS NULL
          AND NOT ((s.organization_id, s.lease_id) IN ({_BATCH_NAMED}) AND (
                ({UTILITY_STATEMENT_ERROR}) IS NOT NULL
                OR NOT EXISTS (SELECT 1 FROM tm_recon_batch_invoice i
                               WHERE i.organization_id = s.organization_id AND i.lease_id = s.lease_id
                                 AND i.status = :draft)))
        UNION ALL
        SELECT s.organization_id, s.id FROM tm_recon_batch_statement s
        JOIN tm_recon_batch_misused_line m ON m.invoice_line_id = s.invoice_line_id
        WHERE m.invoice_id IS NULL OR EXISTS (
            SELECT 1 FROM tm_recon_batch_invoice i WHERE i.id = m.invoice_id AND i.organization_id = s.organization_id)
    """,
    TOTALS: """
        SELECT d.organization_id, d.id FROM tm_recon_batch_invoice d
        LEFT JOIN (
            SELECT l.invoice_id, sum(l.amount) AS amount FROM invoice_lines l
            WHERE l.invoice_id = ANY(ARRAY(SELECT i.id FROM tm_recon_batch_invoice i WHERE i.status = :draft))
            GROUP BY l.invoice_id
        ) l ON l.invoice_id = d.id
        WHERE d.status = :draft
          AND (l.invoice_id IS NULL OR d.subtotal IS DISTINCT FROM l.amount OR d.total IS DISTINCT FROM l.amount)
    """,
    HANDS_OFF: f"""
        WITH settled AS MATERIALIZED (
            SELECT i.organization_id, i.id, i.xmin AS xmin FROM invoices i
            WHERE i.organization_id = ANY(:organization_ids) AND i.status <> :draft
        )
        SELECT i.organization_id, i.id FROM settled i JOIN tm_recon_batch_run w ON w.organization_id = i.organization_id
        WHERE w.started_xid IS NOT NULL AND {_WRITTEN_DURING_RUN.format(row="i", **_BATCH_WINDOW)}
        UNION ALL
        SELECT i.organization_id, l.invoice_id FROM invoice_lines l
        JOIN settled i ON i.id = l.invoice_id JOIN tm_recon_batch_run w ON w.organization_id = i.organization_id
        WHERE l.invoice_id = ANY(ARRAY(SELECT id FROM settled))
          AND w.started_xid IS NOT NULL AND {_WRITTEN_DURING_RUN.format(row="l", **_BATCH_WINDOW)}
    """,
}
_BATCH_COUNTS = {
    RunType.MONTHLY_RENT: """
        SELECT r.organization_id, r.id FROM tm_recon_batch_run r
        LEFT JOIN unnest(CAST(:figure_organization_ids AS bigint[]), CAST(:invoiced AS bigint[]))
            AS f(organization_id, invoiced) ON f.organization_id = r.organization_id
        WHERE r.total_leases <> r.success_count + r.skipped_count + r.failure_count
           OR r.success_count + r.skipped_count <> coalesce(f.invoiced, 0)
           OR r.failure_count <> (SELECT count(DISTINCT n.lease_id) FROM tm_recon_batch_named n
                                  WHERE n.organization_id = r.organization_id)
    """,
    RunType.UTILITY: """
        SELECT r.organization_id, r.id FROM tm_recon_batch_run r
        WHERE r.total_leases <> r.success_count + r.skipped_count + r.failure_count
           -- A lease may be billed and named (one bad statement among good ones): at least.
           OR r.skipped_count + r.failure_count > (SELECT count(DISTINCT n.lease_id) FROM tm_recon_batch_named n
                                                   WHERE n.organization_id = r.organization_id)
    """,
}
# rent_coverage, as _FIGURES has it for one organization, per organization of the batch.
_BATCH_FIGURES = {
    RENT_COVERAGE: f"""
        SELECT organization_id,
               count(DISTINCT id) FILTER (WHERE offending) AS count,
               (array_agg(DISTINCT id ORDER BY id) FILTER (WHERE offending))[1:CAST(:max_ids AS integer)] AS ids,
               count(*) FILTER (WHERE invoiced) AS invoiced
        FROM (
            SELECT coalesce(s.organization_id, i.organization_id) AS organization_id,
                   coalesce(s.lease_id, i.lease_id) AS id,
                   (s.error IS NULL AND i.lease_id IS NULL AND (s.organization_id, s.lease_id) NOT IN ({_BATCH_NAMED}))
                   OR (i.status = :draft AND (s.lease_id IS NULL OR s.error IS NOT NULL)) AS offending,
                   s.lease_id IS NOT NULL AND s.error IS NULL AND i.lease_id IS NOT NULL AS invoiced
            FROM tm_recon_batch_lease s
            FULL JOIN tm_recon_batch_invoice i ON i.organization_id = s.organization_id AND i.lease_id = s.lease_id
        ) pairs
        GROUP BY organization_id
    """,
}
