"""Organization schedules' arithmetic: local due times in UTC across daylight saving and the date line,
the occurrence a tick bills, and the settings' validation."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from tentman.billing.periods import BillingPeriod
from tentman.billing.schedules import (
    CATCH_UP,
    OrganizationSchedule,
    due_occurrence,
    known_time_zone,
    next_occurrence,
    occurrences_between,
)
from tentman.names import RunType

pytestmark = pytest.mark.unit

RENT, UTILITY = RunType.MONTHLY_RENT, RunType.UTILITY
NEW_YORK_RENT = OrganizationSchedule.parse(1, timezone="America/New_York", rent_schedule_day=20, rent_schedule_hour=6)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_a_local_hour_is_its_utc_hour_of_the_season():
    # 06:00 in New York: 11:00 UTC in January (EST), 10:00 UTC in July (EDT).
    assert due_occurrence(NEW_YORK_RENT, RENT, utc(2027, 1, 20, 10)) is None  # 05:00 there
    january = due_occurrence(NEW_YORK_RENT, RENT, utc(2027, 1, 20, 11))
    assert (january.due_at, january.period, january.period_key) == (
        utc(2027, 1, 20, 11),
        BillingPeriod.for_month(2027, 2),
        date(2027, 2, 1),
    )
    assert january.local_due_at.isoformat() == "2027-01-20T06:00:00-05:00"
    july = due_occurrence(NEW_YORK_RENT, RENT, utc(2027, 7, 20, 10))
    assert (july.due_at, july.period) == (utc(2027, 7, 20, 10), BillingPeriod.for_month(2027, 8))


def test_a_tick_bills_the_latest_due_time_within_the_catch_up_window():
    due = utc(2027, 1, 20, 11)
    assert due_occurrence(NEW_YORK_RENT, RENT, due - timedelta(hours=1)) is None  # December 20 is a month back
    assert due_occurrence(NEW_YORK_RENT, RENT, due + timedelta(hours=3)).due_at == due  # missed ticks caught up
    assert due_occurrence(NEW_YORK_RENT, RENT, due + CATCH_UP - timedelta(hours=1)).due_at == due
    assert due_occurrence(NEW_YORK_RENT, RENT, due + CATCH_UP) is None


def test_an_hour_the_clocks_skip_is_due_at_the_first_instant_after_the_gap():
    # New York, 2027-03-14: 02:00 does not exist (01:59 EST is followed by 03:00 EDT).
    schedule = OrganizationSchedule.parse(2, timezone="America/New_York", rent_schedule_day=14, rent_schedule_hour=2)
    [occurrence] = occurrences_between(schedule, RENT, utc(2027, 3, 1), utc(2027, 4, 1))
    assert occurrence.due_at == utc(2027, 3, 14, 7)  # 03:00 EDT: the first tick at or after it
    assert occurrence.local_due_at.isoformat() == "2027-03-14T03:00:00-04:00"


def test_an_hour_the_clocks_repeat_is_due_once_at_its_first_occurrence():
    # New York, 2027-11-07: 01:00 happens at 05:00 UTC (EDT) and again at 06:00 UTC (EST).
    schedule = OrganizationSchedule.parse(3, timezone="America/New_York", rent_schedule_day=7, rent_schedule_hour=1)
    occurrences = occurrences_between(schedule, RENT, utc(2027, 11, 1), utc(2027, 12, 1))
    assert [o.due_at for o in occurrences] == [utc(2027, 11, 7, 5)]
    assert due_occurrence(schedule, RENT, utc(2027, 11, 7, 6)).due_at == utc(2027, 11, 7, 5)  # the same one


def test_a_utility_weekday_is_the_local_weekday_across_the_date_line():
    # Auckland's Monday 08:00 (NZDT, +13) is Sunday 19:00 UTC; the local date is the period key, and
    # Monday 2027-02-01 bills February although it is still January 31 in UTC.
    schedule = OrganizationSchedule.parse(
        4, timezone="Pacific/Auckland", utility_schedule_weekday=1, utility_schedule_hour=8
    )
    occurrence = next_occurrence(schedule, UTILITY, utc(2027, 1, 30))
    assert occurrence.due_at == utc(2027, 1, 31, 19)
    assert occurrence.local_due_at.isoweekday() == 1 and occurrence.local_due_at.hour == 8
    assert (occurrence.period_key, occurrence.period) == (date(2027, 2, 1), BillingPeriod.for_month(2027, 2))
    weekly = occurrences_between(schedule, UTILITY, utc(2027, 1, 1), utc(2027, 2, 1))
    assert [o.due_at.isoweekday() for o in weekly] == [7, 7, 7, 7, 7]  # Sundays in UTC, Mondays there
    # In July (NZST, +12) the same local hour is 20:00 UTC.
    assert next_occurrence(schedule, UTILITY, utc(2027, 7, 1)).due_at == utc(2027, 7, 4, 20)


def test_an_organization_without_its_own_schedule_has_no_due_time():
    default = OrganizationSchedule(5)
    assert not default.has_own(RENT) and not default.has_own(UTILITY)
    assert due_occurrence(default, RENT, utc(2027, 1, 20, 11)) is None
    assert next_occurrence(default, UTILITY, utc(2027, 1, 20)) is None
    assert default.describe(RENT) == "default"
    assert NEW_YORK_RENT.describe(RENT) == "day 20 at 06:00 America/New_York"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"rent_schedule_day": 20},
            "rent_schedule_day is 20 but rent_schedule_hour is null; expected both set",
        ),
        (
            {"utility_schedule_hour": 7},
            "utility_schedule_hour is 7 but utility_schedule_weekday is null; expected both set",
        ),
        (
            {"rent_schedule_day": 29, "rent_schedule_hour": 6},
            "rent_schedule_day 29 is not valid; expected a day of the month from 1 to 28, or null",
        ),
        (
            {"rent_schedule_day": 20, "rent_schedule_hour": 24},
            "rent_schedule_hour 24 is not valid; expected an hour from 0 to 23, or null",
        ),
        (
            {"utility_schedule_weekday": 0, "utility_schedule_hour": 6},
            "utility_schedule_weekday 0 is not valid; expected an ISO weekday (1 = Monday) from 1 to 7, or null",
        ),
        (
            {"rent_schedule_day": True, "rent_schedule_hour": 6},
            "rent_schedule_day True is not valid",
        ),
        (
            {"timezone": "America/Gotham"},
            "timezone 'America/Gotham' is not a known time zone; expected an IANA name",
        ),
    ],
)
def test_bad_settings_are_refused_naming_the_field_the_value_and_what_is_accepted(fields, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        OrganizationSchedule.parse(6, **fields)


@pytest.mark.parametrize(
    ("name", "known"),
    [
        (None, True),  # UTC
        ("America/New_York", True),
        ("UTC", True),
        ("Mars/Olympus", False),
        ("../etc/passwd", False),  # ZoneInfo would refuse it with a ValueError, not a KeyError
        ("", False),
        (" America/New_York", False),  # as stored: the API stores it stripped
    ],
)
def test_a_stored_time_zone_is_known_only_if_this_machines_zone_data_has_it(name, known):
    assert known_time_zone(name) is known
