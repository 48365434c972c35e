"""The "Schedule" view's API: the billing runs due in the next days, and each organization's next runs.

Two kinds of run are due: a tick of a default DAG's cron (tentman.settings, UTC; `manual`: none),
which bills every active organization without a schedule of its own for that run type, and an
organization's own due time (tentman.billing.schedules), which the schedules DAG bills at the first
hourly tick at or after it. A tick's billing period is the one its run resolves from its logical
date (tentman.billing.periods): rent the month after the tick, utility the tick's month.

The settings table is written by other services too, and a time zone name is not checked by the
database: an organization whose stored zone is unknown here gets no next runs and no due times
(logged as a warning) rather than failing the whole list.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from croniter import croniter
from fastapi import APIRouter, Depends, Query

from tentman import settings
from tentman.billing.periods import BillingPeriod, rent_period_for_run, utility_period_for_run
from tentman.billing.schedules import OrganizationSchedule, known_time_zone, next_occurrence, occurrences_between
from tentman.names import RunType
from tentman.ui import queries
from tentman.ui.deps import read_only_connection, requires_reading_runs
from tentman.ui.models import NextRun, Schedule, ScheduledRun, error_responses

log = logging.getLogger(__name__)

router = APIRouter(dependencies=[requires_reading_runs])

RUN_TYPES = (RunType.MONTHLY_RENT, RunType.UTILITY)
# A cron that ticks every minute (as some test stacks' do) would list tens of thousands of ticks:
# the list of each default cron stops here.
MAX_TICKS = 1000
DEFAULT = "default"


def default_crons() -> dict[RunType, str | None]:
    """Each run type's default cron (UTC) as the DAGs run with it here; None: manual."""
    return {RunType.MONTHLY_RENT: settings.rent_schedule(), RunType.UTILITY: settings.utility_schedule()}


def cron_ticks(cron: str, after: datetime, until: datetime, limit: int = MAX_TICKS) -> list[datetime]:
    """The cron's ticks in (after, until], in UTC, at most `limit` of them."""
    ticks: list[datetime] = []
    it = croniter(cron, after.astimezone(UTC))
    while len(ticks) < limit and (tick := it.get_next(datetime).astimezone(UTC)) <= until:
        ticks.append(tick)
    return ticks


def next_tick(cron: str | None, after: datetime) -> datetime | None:
    """The cron's first tick after `after` (UTC); None for a manual schedule."""
    return None if cron is None else croniter(cron, after.astimezone(UTC)).get_next(datetime).astimezone(UTC)


def tick_period(run_type: str, tick: datetime) -> BillingPeriod:
    """What a default run at `tick` bills, as its first step resolves it."""
    return rent_period_for_run(tick) if run_type == RunType.MONTHLY_RENT else utility_period_for_run(tick)


def schedule_of(row) -> OrganizationSchedule | None:
    """The organization's schedule as stored (a row with organization_id and the five settings); None when
    its time zone is not one this server knows."""
    if not known_time_zone(row.timezone):
        log.warning(
            "organization %s has the unknown time zone %r in its billing settings; its runs are not shown",
            row.organization_id,
            row.timezone,
        )
        return None
    return OrganizationSchedule(
        row.organization_id,
        timezone=row.timezone,
        rent_schedule_day=row.rent_schedule_day,
        rent_schedule_hour=row.rent_schedule_hour,
        utility_schedule_weekday=row.utility_schedule_weekday,
        utility_schedule_hour=row.utility_schedule_hour,
    )


def next_run(
    schedule: OrganizationSchedule, run_type: str, now: datetime, default_tick: datetime | None
) -> NextRun | None:
    """The organization's next run of `run_type` after `now`: its own due time, else the default cron's
    next tick (`default_tick`, None when manual) shown in the organization's time zone."""
    if schedule.has_own(run_type):
        occurrence = next_occurrence(schedule, run_type, now)
        if occurrence is None:
            return None
        return NextRun(
            due_at=occurrence.due_at,
            local_due_at=occurrence.local_due_at,
            billing_period=occurrence.period.label,
            schedule=schedule.describe(run_type),
        )
    if default_tick is None:
        return None
    return NextRun(
        due_at=default_tick,
        local_due_at=default_tick.astimezone(schedule.zone),
        billing_period=tick_period(run_type, default_tick).label,
        schedule=DEFAULT,
    )


def upcoming_runs(
    organizations: Iterable,
    default_organizations: dict[str, int],
    crons: dict[RunType, str | None],
    start: datetime,
    end: datetime,
) -> list[ScheduledRun]:
    """Every run due in (start, end]: each default cron's ticks with the organizations they bill, and each
    organization's own due times (`organizations`: rows of queries.organizations_on_own_schedules)."""
    runs = [
        ScheduledRun(
            run_type=run_type,
            due_at=tick,
            billing_period=tick_period(run_type, tick).label,
            source="default",
            organizations=default_organizations[run_type],
            cron=cron,
        )
        for run_type, cron in crons.items()
        if cron is not None
        for tick in cron_ticks(cron, start, end)
    ]
    for row in organizations:
        schedule = schedule_of(row)
        if schedule is None:
            continue
        for run_type in RUN_TYPES:
            runs.extend(
                ScheduledRun(
                    run_type=run_type,
                    due_at=occurrence.due_at,
                    billing_period=occurrence.period.label,
                    source="organization",
                    organization_id=row.organization_id,
                    name=row.name,
                    timezone=schedule.timezone or "UTC",
                    local_due_at=occurrence.local_due_at,
                    schedule=schedule.describe(run_type),
                    billing_hold=bool(row.billing_hold),
                )
                for occurrence in occurrences_between(schedule, run_type, start, end)
            )
    # At one instant: default ticks first, then rent before utility (as their priorities), then by organization.
    runs.sort(
        key=lambda r: (r.due_at, r.source != "default", r.run_type != RunType.MONTHLY_RENT, r.organization_id or 0)
    )
    return runs


@router.get(
    "/api/schedule",
    response_model=Schedule,
    summary="The billing runs due in the next days: default cron ticks and organizations' own due times",
    responses=error_responses(422),
)
def get_schedule(
    days: int = Query(30, ge=1, le=90, description="How many days ahead, 1 to 90"),
    conn=Depends(read_only_connection),
) -> Schedule:
    start = datetime.now(UTC)
    end = start + timedelta(days=days)
    crons = default_crons()
    counts = queries.default_run_organizations(conn)
    default_organizations = {RunType.MONTHLY_RENT: counts.rent, RunType.UTILITY: counts.utility}
    return Schedule(
        start=start,
        end=end,
        days=days,
        default_schedules={run_type.value: cron for run_type, cron in crons.items()},
        runs=upcoming_runs(queries.organizations_on_own_schedules(conn), default_organizations, crons, start, end),
    )
