"""The schedule's arithmetic without a database: default cron ticks and the periods they bill, an
organization's next runs (its own, else the default tick in its time zone), and the runs of a window in
time order. The queries behind them are tested in tests/ui/test_queries.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from tentman.billing.schedules import OrganizationSchedule
from tentman.names import RunType
from tentman.ui.schedule import cron_ticks, next_run, next_tick, tick_period, upcoming_runs

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 4, 14, 50, tzinfo=UTC)  # a Friday
NEW_YORK = OrganizationSchedule(7, "America/New_York", 20, 6, 3, 7)
RENT, UTILITY = RunType.MONTHLY_RENT, RunType.UTILITY


@pytest.mark.parametrize(
    "cron, until, expected",
    [
        (
            "0 3 * * 1",
            NOW + timedelta(days=30),
            ["2026-12-07 03:00", "2026-12-14 03:00", "2026-12-21 03:00", "2026-12-28 03:00"],
        ),
        ("0 2 26 * *", NOW + timedelta(days=60), ["2026-12-26 02:00", "2027-01-26 02:00"]),
        ("0 2 26 * *", NOW + timedelta(days=1), []),
    ],
)
def test_cron_ticks_are_the_ticks_after_the_start_up_to_the_end(cron, until, expected):
    assert [f"{t:%Y-%m-%d %H:%M}" for t in cron_ticks(cron, NOW, until)] == expected
    assert all(t.utcoffset() == timedelta(0) for t in cron_ticks(cron, NOW, until))


def test_cron_ticks_stop_at_the_limit_and_a_manual_cron_has_no_next_tick():
    assert len(cron_ticks("* * * * *", NOW, NOW + timedelta(days=30), limit=10)) == 10
    assert next_tick(None, NOW) is None
    assert next_tick("0 3 * * 1", NOW) == datetime(2026, 12, 7, 3, tzinfo=UTC)


def test_a_ticks_period_is_what_its_run_bills():
    assert tick_period(RENT, datetime(2026, 12, 26, 2, tzinfo=UTC)).label == "2027-01"  # the month after
    assert tick_period(UTILITY, datetime(2026, 12, 28, 3, tzinfo=UTC)).label == "2026-12"


def test_an_own_schedule_gives_its_next_local_due_time():
    rent = next_run(NEW_YORK, RENT, NOW, next_tick("0 2 26 * *", NOW))
    assert (rent.due_at, rent.local_due_at.isoformat()) == (
        datetime(2026, 12, 20, 11, tzinfo=UTC),  # 06:00 EST = 11:00 UTC
        "2026-12-20T06:00:00-05:00",
    )
    assert (rent.billing_period, rent.schedule) == ("2027-01", "day 20 at 06:00 America/New_York")
    utility = next_run(NEW_YORK, UTILITY, NOW, next_tick("0 3 * * 1", NOW))
    assert (utility.local_due_at.isoformat(), utility.billing_period) == ("2026-12-09T07:00:00-05:00", "2026-12")
    assert utility.schedule == "Wednesday at 07:00 America/New_York"


def test_the_default_schedule_gives_the_crons_next_tick_in_the_organizations_zone():
    paris = OrganizationSchedule(8, "Europe/Paris")
    rent = next_run(paris, RENT, NOW, next_tick("0 2 26 * *", NOW))
    assert (rent.due_at, rent.local_due_at.isoformat()) == (
        datetime(2026, 12, 26, 2, tzinfo=UTC),
        "2026-12-26T03:00:00+01:00",
    )
    assert (rent.billing_period, rent.schedule) == ("2027-01", "default")
    assert next_run(paris, UTILITY, NOW, None) is None  # a manual default cron: no next run


def row(schedule: OrganizationSchedule, name: str, hold: bool = False) -> SimpleNamespace:
    return SimpleNamespace(
        organization_id=schedule.organization_id,
        name=name,
        billing_hold=hold,
        timezone=schedule.timezone,
        rent_schedule_day=schedule.rent_schedule_day,
        rent_schedule_hour=schedule.rent_schedule_hour,
        utility_schedule_weekday=schedule.utility_schedule_weekday,
        utility_schedule_hour=schedule.utility_schedule_hour,
    )


def test_upcoming_runs_list_default_ticks_with_counts_and_own_due_times_in_time_order():
    tokyo = OrganizationSchedule(9, "Asia/Tokyo", None, None, 1, 12)  # Mondays 12:00 JST = 03:00 UTC
    runs = upcoming_runs(
        [row(NEW_YORK, "Lakeside Lofts"), row(tokyo, "Shinjuku Heights", hold=True)],
        {RENT: 40, UTILITY: 38},
        {RENT: "0 2 26 * *", UTILITY: "0 3 * * 1"},
        NOW,
        NOW + timedelta(days=10),
    )
    assert [
        (f"{r.due_at:%m-%d %H:%M}", r.run_type.value, r.source, r.organizations, r.organization_id) for r in runs
    ] == [
        ("12-07 03:00", "utility", "default", 38, None),
        ("12-07 03:00", "utility", "organization", None, 9),  # the same instant: the default tick first
        ("12-09 12:00", "utility", "organization", None, 7),
        ("12-14 03:00", "utility", "default", 38, None),
        ("12-14 03:00", "utility", "organization", None, 9),
    ]
    shinjuku = runs[1]
    assert (shinjuku.name, shinjuku.timezone, shinjuku.billing_hold) == ("Shinjuku Heights", "Asia/Tokyo", True)
    assert shinjuku.local_due_at.isoformat() == "2026-12-07T12:00:00+09:00"
    assert (runs[0].cron, runs[0].billing_period) == ("0 3 * * 1", "2026-12")
    # Rent: its default tick on the 26th and Lakeside Lofts' own on the 20th, with what each bills.
    later = upcoming_runs(
        [row(NEW_YORK, "Lakeside Lofts")],
        {RENT: 40, UTILITY: 38},
        {RENT: "0 2 26 * *", UTILITY: None},
        NOW,
        NOW + timedelta(days=30),
    )
    rent = [(f"{r.due_at:%m-%d %H:%M}", r.source, r.billing_period) for r in later if r.run_type == RENT]
    assert rent == [("12-20 11:00", "organization", "2027-01"), ("12-26 02:00", "default", "2027-01")]
    assert not [r for r in later if r.source == "default" and r.run_type == UTILITY]  # manual: no ticks


def test_an_organization_with_an_unknown_stored_time_zone_is_left_out_not_a_failure(caplog):
    mars = row(OrganizationSchedule(10, "Mars/Olympus_Mons", 20, 6), "Red Planet Rentals")
    no_crons = {RENT: None, UTILITY: None}
    organizations = [mars, row(NEW_YORK, "Lakeside Lofts")]
    runs = upcoming_runs(organizations, {RENT: 1, UTILITY: 1}, no_crons, NOW, NOW + timedelta(days=30))
    assert {r.organization_id for r in runs} == {7}
    assert "organization 10 has the unknown time zone 'Mars/Olympus_Mons'" in caplog.text
