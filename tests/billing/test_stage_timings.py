"""Stage timings: an engine asked for them reports every SQL stage by a stable name, in order, each
timed once per run of the stage and inside the call. Real PostgreSQL, small sizes: what the figures
are is left to the benchmarks (`make bench`); these tests hold what the timings must contain."""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections import Counter
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from support.factories import add_lease, add_organization, add_statement
from tentman.billing import timing
from tentman.billing.periods import BillingPeriod
from tentman.billing.rent import RENT_STAGES, generate_rent_invoices
from tentman.billing.timing import StageTimings
from tentman.billing.utility import UTILITY_STAGES, generate_utility_invoices
from tentman.names import ProrationMethod
from tentman_dev.bench.engines import generate_leases

MAR_2026 = BillingPeriod.for_month(2026, 3)
DEC_2026 = BillingPeriod.for_month(2026, 12)

# Written out: `make bench`'s JSON line carries these names, so renaming one is a visible change.
# The stages that run once per batch of leases.
RENT_WRITE_STAGE_NAMES = (
    "insert_new",
    "update_changed",
    "delete_old_lines",
    "upsert_changed_lines",
    "mark_unchanged",
    "link_unchanged",
)
RENT_STAGE_NAMES = (
    "lock",
    "stage_leases",
    "stage_lines",
    "flag_bad_charges",
    "stage_targets",
    "flag_targets",
    "analyze_targets",
    "stage_line_diff",
    "delete_stale_drafts",
    *RENT_WRITE_STAGE_NAMES,
    "counts",
)
UTILITY_STAGE_NAMES = (
    "lock",
    "relink_billed",
    "stage_pending",
    "stage_leases",
    "flag_lease_problems",
    "bill_statements",
    "recompute_totals",
    "counts",
)


class EveryRun(StageTimings):
    """StageTimings that also keeps each run of a stage: (name, started, ended) around the recorder's own."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[tuple[str, float, float]] = []

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            with super().stage(name):
                yield
        finally:  # a run that fails (a batch of the bisection) is timed too
            self.runs.append((name, started, time.perf_counter()))

    def run_counts(self) -> dict[str, int]:
        return dict(Counter(name for name, _, _ in self.runs))


def timed_rent(engine, org) -> tuple[tuple[float, float], EveryRun, object]:
    timings = EveryRun()
    with engine.begin() as conn:
        started = time.perf_counter()
        result = generate_rent_invoices(
            conn,
            organization_id=org,
            period=MAR_2026,
            proration_method=ProrationMethod.ACTUAL_DAYS_IN_MONTH,
            invoice_run_id=None,
            timings=timings,
        )
        ended = time.perf_counter()
    return (started, ended), timings, result


def assert_accounts_for(timings: EveryRun, call: tuple[float, float], names: tuple[str, ...]) -> None:
    """Every stage named, in the order the stages first ran; the runs one after the other inside the
    call; each name's seconds no more than its runs took, the total their sum."""
    assert tuple(timings.seconds) == names
    assert tuple(timings.run_counts()) == names
    assert all(seconds >= 0 for seconds in timings.seconds.values()), timings.seconds
    started, ended = call
    previous_end = started
    for name, run_started, run_ended in timings.runs:
        assert previous_end <= run_started <= run_ended <= ended, name
        previous_end = run_ended
    for name, seconds in timings.seconds.items():
        assert seconds <= sum(e - s for n, s, e in timings.runs if n == name) + 1e-9, name
    assert math.isclose(timings.total, sum(timings.seconds.values()))
    assert timings.total <= ended - started


@pytest.fixture
def one_second_per_stage(monkeypatch):
    """The recorder's clock advances one second each time it is read: a stage run lasts one second."""
    ticks = itertools.count()
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))


def test_rent_engine_reports_every_stage(engine):
    with engine.begin() as conn:
        org = add_organization(conn)
        generate_leases(conn, org, 1_000)

    call, timings, result = timed_rent(engine, org)
    assert result.invoices_created == 1_000
    assert RENT_STAGES == RENT_STAGE_NAMES
    assert_accounts_for(timings, call, RENT_STAGE_NAMES)
    assert set(timings.run_counts().values()) == {1}

    call, timings, rerun = timed_rent(engine, org)
    assert rerun.invoices_unchanged == 1_000
    assert_accounts_for(timings, call, RENT_STAGE_NAMES)


def test_rent_stages_add_up_across_the_batches_of_a_bisected_write(engine, one_second_per_stage):
    # One lease's line breaks a constraint the engine knows nothing about: the write stages run
    # once per batch of the bisection, and each name sums its batches.
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE invoice_lines ADD CONSTRAINT test_no_777 CHECK (amount <> 777.77)")
        org = add_organization(conn)
        for i in range(20):
            add_lease(conn, org, date(2025, 1, 1), None, "777.77" if i == 7 else f"{100 + i}.00")

    _, timings, result = timed_rent(engine, org)
    assert (result.success_count, result.failure_count) == (19, 1)
    assert tuple(timings.seconds) == RENT_STAGE_NAMES
    runs = timings.run_counts()
    assert timings.seconds == {name: float(count) for name, count in runs.items()}
    assert runs["insert_new"] > 1  # the first try, then the batches
    assert {name for name, count in runs.items() if count > 1} <= set(RENT_WRITE_STAGE_NAMES)
    assert timings.total == sum(runs.values())


def test_an_organization_that_cannot_be_billed_reports_its_lock_only(engine):
    with engine.begin() as conn:
        org = add_organization(conn, currency="usd")
    _, timings, result = timed_rent(engine, org)
    assert result.status == "failed"
    assert tuple(timings.seconds) == ("lock",)


def test_utility_engine_reports_every_stage(engine):
    with engine.begin() as conn:
        org = add_organization(conn)
        generate_leases(conn, org, 300)
        leases = conn.execute(sa.text("SELECT id FROM leases WHERE organization_id = :o"), {"o": org}).scalars()
        for lease in leases.all():
            add_statement(conn, org, lease, "12.34")
        add_statement(conn, org, lease, None)  # bad: recorded, not billed

    timings = EveryRun()
    with engine.begin() as conn:
        started = time.perf_counter()
        result = generate_utility_invoices(
            conn, organization_id=org, period=DEC_2026, invoice_run_id=None, timings=timings
        )
        ended = time.perf_counter()
    assert result.statements_billed == 300 and result.amount_billed == Decimal("3702.00")
    assert UTILITY_STAGES == UTILITY_STAGE_NAMES
    assert_accounts_for(timings, (started, ended), UTILITY_STAGE_NAMES)
