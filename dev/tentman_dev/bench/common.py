"""What the benchmarks share: their scratch server and databases, the rent engine timed, the COPY floor."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import resource
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from tentman.billing.periods import BillingPeriod
from tentman.billing.reconciliation import reconcile_invoice_run, record_run_start
from tentman.billing.rent import generate_rent_invoices
from tentman.billing.timing import StageTimings, stage_clock
from tentman.db import create_engine_from_uri
from tentman.migrate import upgrade
from tentman.names import ProrationMethod, RunType
from tentman.runs.invoice_runs import RunKey, complete_invoice_run, open_invoice_run
from tentman_dev.local import ensure_database, server_uri, start_embedded_postgres, with_database

# The month every engine benchmark bills, and how.
PERIOD = BillingPeriod.for_month(2026, 3)
BENCH_PRORATION = ProrationMethod.ACTUAL_DAYS_IN_MONTH
# The `invoice_runs.dag_id` of the runs `make bench` reconciles (no DAG runs them).
BENCH_DAG_ID = "make_bench"


@contextlib.contextmanager
def bench_server():
    """Admin URI of the benchmark's server: TENTMAN_BENCH_DATABASE_URL, else an embedded one."""
    admin_uri = os.environ.get("TENTMAN_BENCH_DATABASE_URL")
    if admin_uri:
        yield admin_uri
        return
    with tempfile.TemporaryDirectory(prefix="tentman-bench-") as tmp:
        server = start_embedded_postgres(Path(tmp) / "pgdata", cleanup_mode="stop")
        try:
            yield server_uri(server)
        finally:
            server.cleanup()


@contextlib.contextmanager
def scratch_database(admin_uri: str, prefix: str):
    """An engine on a freshly migrated database, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    ensure_database(admin_uri, name)
    engine = create_engine_from_uri(with_database(admin_uri, name))
    try:
        upgrade(engine, with_application_tables=True)
        yield engine
    finally:
        engine.dispose()
        admin = create_engine_from_uri(admin_uri, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def vacuum_analyze(engine, *tables: str) -> None:
    """VACUUM ANALYZE `tables` (every table when none are named): settled tables, fresh statistics."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"VACUUM ANALYZE {', '.join(tables)}")


_INSUFFICIENT_PRIVILEGE = "42501"  # SQLSTATE


def checkpoint(engine) -> None:
    """CHECKPOINT, so that the timed phase that follows starts as every other one does.

    Each phase writes hundreds of megabytes of WAL; left alone, the server starts a checkpoint
    whenever that volume crosses its threshold, and the phase it falls in pays for its writes and
    for a full-page image of every page it then modifies first, so the ratio depended on where
    the previous phase left off (docs/scaling.md, "The billing engine").
    """
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("CHECKPOINT")
    except sa.exc.DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != _INSUFFICIENT_PRIVILEGE:
            raise
        raise SystemExit(
            f"the benchmark's database role {engine.url.username!r} may not run CHECKPOINT: give "
            "TENTMAN_BENCH_DATABASE_URL a superuser (or, on PostgreSQL 15 and later, a member of pg_checkpoint)"
        ) from exc


@dataclasses.dataclass
class Phase:
    """One timed phase: its seconds, the megabytes of WAL the server wrote during it, and the same
    two figures for each of its named parts (a floor's table by table)."""

    seconds: float = 0.0
    wal_mb: float = 0.0
    parts: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    @contextlib.contextmanager
    def part(self, name: str, cur):
        """Time the block as part `name`, its WAL read on `cur` (the psycopg cursor doing the work)."""
        cur.execute("SELECT pg_current_wal_insert_lsn()")
        (start_lsn,) = cur.fetchone()
        started = time.perf_counter()
        yield
        seconds = time.perf_counter() - started
        cur.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s)", (start_lsn,))
        (written,) = cur.fetchone()
        self.parts[name] = {"seconds": round(seconds, 3), "wal_mb": round(float(written) / 2**20, 1)}

    def parts_text(self) -> str:
        """`name 1.23s / 45 MB, ...`: the parts as the benchmark prints them."""
        return ", ".join(f"{name} {p['seconds']:.2f}s / {p['wal_mb']:,.0f} MB" for name, p in self.parts.items())


@contextlib.contextmanager
def timed_phase(engine):
    """CHECKPOINT, then time the block and meter the WAL written meanwhile (yields its Phase).

    The WAL is the server's, every session's: the benchmark runs nothing else. Unlike the seconds,
    it hardly varies from run to run, so it shows where the engine writes more than the floor even
    on a noisy machine. The meter's connection is in autocommit: it holds no snapshot open during
    the phase (one would keep the phase's VACUUM-able rows from being pruned).
    """
    checkpoint(engine)
    phase = Phase()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as meter:
        start_lsn = meter.execute(sa.text("SELECT pg_current_wal_insert_lsn()")).scalar_one()
        started = time.perf_counter()
        yield phase
        phase.seconds = time.perf_counter() - started
        written = meter.execute(
            sa.text("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), CAST(:start AS pg_lsn))"), {"start": start_lsn}
        ).scalar_one()
    phase.wal_mb = float(written) / 2**20


# How many times each engine and its floor run, alternately, by default (`--pairs`).
DEFAULT_PAIRS = 3


def pairs_argument(text: str) -> int:
    """`--pairs`: a whole number of engine/floor pairs, at least 1."""
    try:
        pairs = int(text)
    except ValueError:
        pairs = 0
    if pairs < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of pairs, at least 1; got {text!r}")
    return pairs


@dataclasses.dataclass
class PairedRatio:
    """An engine and one of its floors timed as alternating pairs (engine, floor, engine, floor…) on
    the same data, seconds per pair. The verdict is the median of the pairs' ratios (the floor's time
    ÷ the engine's: above 1, the engine is faster than its floor), with their min–max: on a machine
    whose speed drifts by a third within an hour, one pair is a draw, and a pair run back to back
    shares the machine's minute."""

    engine_s: list[float] = dataclasses.field(default_factory=list)
    floor_s: list[float] = dataclasses.field(default_factory=list)

    def add(self, engine_s: float, floor_s: float) -> None:
        self.engine_s.append(engine_s)
        self.floor_s.append(floor_s)

    @property
    def ratios(self) -> list[float]:
        return [floor / engine for engine, floor in zip(self.engine_s, self.floor_s, strict=True)]

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def low(self) -> float:
        return min(self.ratios)

    @property
    def high(self) -> float:
        return max(self.ratios)

    def pair_figures(self) -> list[dict[str, float]]:
        """Each pair as the JSON line's `*_pairs` carries it."""
        return [
            {"engine_s": round(engine, 3), "floor_s": round(floor, 3), "ratio": round(floor / engine, 2)}
            for engine, floor in zip(self.engine_s, self.floor_s, strict=True)
        ]

    def text(self) -> str:
        """`0.93x (0.88-0.97x over 3 pairs)`: the verdict as the benchmarks print it."""
        return f"{self.median:.2f}x ({self.low:.2f}-{self.high:.2f}x over {len(self.ratios)} pairs)"


@dataclasses.dataclass
class CopyFloorPairs:
    """Rent runs against the COPY floor of their output, as alternating pairs: each pair clears the
    output (`output`: table -> the SQL filter of its rows), times the engine (`engine_run`), then
    COPY of the very rows it wrote (`floor_run`). Between the two, the caller may look at what the
    engine left (its memory, its reconciliation)."""

    output: dict[str, str]
    paired: PairedRatio = dataclasses.field(default_factory=PairedRatio)
    runs: list[Phase] = dataclasses.field(default_factory=list)
    floors: list[Phase] = dataclasses.field(default_factory=list)
    stages: dict[str, StageTimings] = dataclasses.field(default_factory=dict)

    def engine_run(self, engine, bill):
        """Pair n+1's engine run: `bill(timings)` on a cleared output, timed. Its result and phase."""
        clear_output(engine, list(self.output), self.output)
        timings = self.stages[f"pair {len(self.runs) + 1}"] = StageTimings()
        with timed_phase(engine) as phase:
            result = bill(timings)
        self.runs.append(phase)
        return result, phase

    def floor_run(self, engine) -> Phase:
        """The floor of the pair whose engine run came last."""
        floor = copy_floor(engine, list(self.output), self.output)
        self.paired.add(self.runs[-1].seconds, floor.seconds)
        self.floors.append(floor)
        return floor


def median_rate(count: int, seconds: list[float]) -> int:
    """Items per second, the median of the pairs' rates."""
    return round(statistics.median(count / s for s in seconds))


def median_stages(runs: list[StageTimings]) -> dict[str, float]:
    """Seconds per stage, the median over the pairs' runs (the JSON line's `*_stages_s`)."""
    names = dict.fromkeys(name for timings in runs for name in timings.seconds)
    return {name: round(statistics.median(t.seconds[name] for t in runs if name in t.seconds), 3) for name in names}


def median_parts(phases: list[Phase]) -> dict[str, dict[str, float]]:
    """A floor's parts (seconds and WAL per table), the median over the pairs' floors."""
    names = dict.fromkeys(name for phase in phases for name in phase.parts)
    return {
        name: {
            figure: round(
                statistics.median(p.parts[name][figure] for p in phases if name in p.parts),
                3 if figure == "seconds" else 1,
            )
            for figure in ("seconds", "wal_mb")
        }
        for name in names
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bill_rent(
    engine,
    organization_id: int,
    period: BillingPeriod = PERIOD,
    timings: StageTimings | None = None,
    invoice_run_id: int | None = None,
):
    """One rent run and its commit (its result); `timings` gets the stages and the commit. The
    benchmark times it as a phase (timed_phase)."""
    with engine.connect() as conn:
        result = generate_rent_invoices(
            conn,
            organization_id=organization_id,
            period=period,
            proration_method=BENCH_PRORATION,
            invoice_run_id=invoice_run_id,
            timings=timings,
        )
        with stage_clock(timings).stage("commit"):
            conn.commit()
    return result


def open_bench_run(engine, organization_id: int, run_type: RunType) -> int:
    """The organization's `invoice_runs` row for one engine run, opened as a DAG task opens it (the
    reconciliation's window starts here); its id, for the engine and reconcile_phase."""
    with engine.begin() as conn:
        invoice_run_id = open_invoice_run(
            conn,
            RunKey(BENCH_DAG_ID, f"{run_type}-{uuid.uuid4().hex[:8]}", organization_id),
            run_type=run_type,
            period=PERIOD,
            proration_method=BENCH_PRORATION if run_type == RunType.MONTHLY_RENT else None,
        )
        record_run_start(conn, invoice_run_id)
    return invoice_run_id


def reconcile_phase(engine, invoice_run_id: int, result, engine_s: float, label: str) -> dict:
    """Complete the run's `invoice_runs` row with the engine's result, then time its reconciliation
    (reconcile_invoice_run and its commit, as the reconcile task runs it) as a phase of its own:
    seconds, the ratio to the engine's `engine_s`, the seconds of each check. Violations stop the
    benchmark: the engine it measured billed wrongly."""
    with engine.begin() as conn:
        complete_invoice_run(conn, invoice_run_id, result)
    timings = StageTimings()
    with timed_phase(engine) as phase, engine.connect() as conn:
        reconciliation = reconcile_invoice_run(conn, invoice_run_id, timings=timings)
        with timings.stage("commit"):
            conn.commit()
    if not reconciliation.ok:
        raise SystemExit(f"{label} reconciliation found violations: {reconciliation.describe()}")
    print(
        f"{label} reconciliation: {', '.join(c.check for c in reconciliation.checks)} in {phase.seconds:.2f}s, "
        f"{phase.seconds / engine_s:.1%} of the engine's {engine_s:.2f}s",
        flush=True,
    )
    print(stage_table({f"{label} reconcile": phase.seconds}, {f"{label} reconcile": timings}), flush=True)
    prefix = label.replace(" ", "_")
    return {
        f"{prefix}_reconcile_s": round(phase.seconds, 3),
        f"{prefix}_reconcile_vs_engine": round(phase.seconds / engine_s, 3),
        f"{prefix}_reconcile_stages_s": rounded_stages(timings),
    }


def stage_table(total_s: dict[str, float], stages: dict[str, StageTimings]) -> str:
    """A text table of seconds per stage, one column per run, with each run's total beneath.

    `other` is what no stage covers (Python, the connection, savepoints): the total less the stages.
    """
    names = list(dict.fromkeys(name for timings in stages.values() for name in timings.seconds))
    width = max(len(name) for name in [*names, "other", "total"])
    lines = [" ".join([f"{'stage':<{width}}", *(f"{run:>14}" for run in stages)])]
    for name in names:
        cells = (timings.seconds.get(name) for timings in stages.values())
        lines.append(" ".join([f"{name:<{width}}", *(f"{'':>14}" if c is None else f"{c:>13.3f}s" for c in cells)]))
    other = (total_s[run] - timings.total for run, timings in stages.items())
    lines.append(" ".join([f"{'other':<{width}}", *(f"{c:>13.3f}s" for c in other)]))
    lines.append(" ".join([f"{'total':<{width}}", *(f"{total_s[run]:>13.3f}s" for run in stages)]))
    return "\n".join(lines)


def rounded_stages(timings: StageTimings) -> dict[str, float]:
    """Seconds per stage as the benchmark's JSON line carries them (milliseconds precision)."""
    return {name: round(seconds, 3) for name, seconds in timings.seconds.items()}


def dump_rows(cur, table: str, where: str) -> bytes:
    """The rows of `table` matching `where`, in COPY's text format (`cur`: a psycopg cursor)."""
    buf = io.BytesIO()
    with cur.copy(f"COPY (SELECT * FROM {table} WHERE {where}) TO STDOUT") as copy:
        for chunk in copy:
            buf.write(chunk)
    return buf.getvalue()


def load_rows(cur, table: str, rows: bytes) -> None:
    """COPY rows dumped by dump_rows back into `table`."""
    with cur.copy(f"COPY {table} FROM STDIN") as copy:
        copy.write(rows)


def clear_output(engine, tables: list[str], where: dict[str, str]) -> None:
    """Delete the rows of `tables` matching `where` (the last table first) and vacuum the tables: the
    state an engine's run of a pair starts from, as its floor does (copy_floor)."""
    with engine.begin() as conn:
        analyze(conn, *tables)
        for table in reversed(tables):
            conn.exec_driver_sql(f"DELETE FROM {table} WHERE {where[table]}")
    vacuum_analyze(engine, *tables)


def analyze(conn, *tables: str) -> None:
    """ANALYZE `tables` on `conn`, before a statement that selects the rows a phase has just written:
    with the statistics of the tables as they were before (the rows deleted and the tables vacuumed),
    the planner takes the semi-join of lines to invoices for a few rows and runs it as a nested loop
    (seen: a DELETE of 200,000 utility lines still running after 10 minutes)."""
    for table in tables:
        conn.exec_driver_sql(f"ANALYZE {table}")


def copy_floor(engine, tables: list[str], where: dict[str, str]) -> Phase:
    """The COPY of the rows currently in `tables` back in, after deleting them: its Phase."""
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        # Fresh statistics first: the engine has just written these rows, and with the planner's
        # stale estimates the dump's semi-join can run for minutes (seen: over 6 minutes, once).
        for table in tables:
            cur.execute(f"ANALYZE {table}")
        dumps = {table: dump_rows(cur, table, where[table]) for table in tables}
        for table in reversed(tables):
            cur.execute(f"DELETE FROM {table} WHERE {where[table]}")
        raw.commit()
        # Start the floor from clean tables, as the engine's first run did.
        vacuum_analyze(engine, *tables)
        with timed_phase(engine) as phase:
            for table in tables:
                with phase.part(table, cur):
                    load_rows(cur, table, dumps[table])
            raw.commit()
        return phase
    finally:
        raw.close()
