"""Organization schedules: when an organization that bills on its own schedule is due, in UTC.

An organization may set, in its billing settings, a time zone and its own rent day and hour
(rent drafts for month M+1 on day `rent_schedule_day` of month M at `rent_schedule_hour`:00 local
time) and its own utility weekday and hour (ISO weekday, 1 = Monday). Each due time is an
*occurrence*: the UTC instant it falls on, the billing period it stands for, and the key that says
"this organization was billed for this" (`period_key`: rent's billing month, utility's local date).
docs/billing-rules.md, "Organization schedules", states the rules; this module is their arithmetic,
with no database and no Airflow.

Local time is honoured across daylight-saving changes: a local hour is turned into UTC with the
zone's offset on that day. An hour that does not exist (clocks go forward) is taken with the offset
before the change, i.e. the first instant at or after it; an hour that exists twice (clocks go
back) is its first occurrence. Either way one due instant per occurrence, so it is billed once.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo

from tentman.billing.periods import BillingPeriod
from tentman.names import RunType

RENT_DAYS = range(1, 29)  # 1–28: a day every month has
HOURS = range(24)
ISO_WEEKDAYS = range(1, 8)  # 1 = Monday … 7 = Sunday
WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

# A tick bills an occurrence whose due time passed up to this long ago and was not billed yet: the
# ticks a stopped scheduler or a paused DAG missed are caught up, but an organization that sets its
# schedule on the 3rd with day 20 is not billed at once for the month that already began.
CATCH_UP = timedelta(days=7)


@cache
def _available_time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def known_time_zone(name: str | None) -> bool:
    """Whether this machine's zone data knows the stored time zone `name` (None: UTC, always known).

    The one test of a time zone: the API refuses the others (parse_time_zone), and what reads a
    setting stored around it (the schedules page, the schedules DAG) decides with it what to skip.
    """
    return name is None or name in _available_time_zones()


def parse_time_zone(value: object) -> str | None:
    """An organization's time zone: an IANA name (`America/New_York`), or None for UTC."""
    if value is None:
        return None
    if not isinstance(value, str) or not known_time_zone(value.strip()):
        raise ValueError(
            f"timezone {value!r} is not a known time zone; expected an IANA name such as 'America/New_York' "
            "or 'Europe/Paris', or null for UTC"
        )
    return value.strip()


def _parse_whole(field: str, value: object, accepted: range, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value not in accepted:
        raise ValueError(
            f"{field} {value!r} is not valid; expected {what} from {accepted.start} to {accepted.stop - 1}, or null"
        )
    return value


@dataclass(frozen=True)
class OrganizationSchedule:
    """An organization's time zone and own schedules, as stored (None: the default cron, UTC)."""

    organization_id: int
    timezone: str | None = None
    rent_schedule_day: int | None = None
    rent_schedule_hour: int | None = None
    utility_schedule_weekday: int | None = None
    utility_schedule_hour: int | None = None

    @classmethod
    def parse(
        cls,
        organization_id: int,
        *,
        timezone: object = None,
        rent_schedule_day: object = None,
        rent_schedule_hour: object = None,
        utility_schedule_weekday: object = None,
        utility_schedule_hour: object = None,
    ) -> OrganizationSchedule:
        """Validate the five settings; ValueError names the field, the value and what is accepted."""
        schedule = cls(
            organization_id,
            timezone=parse_time_zone(timezone),
            rent_schedule_day=_parse_whole("rent_schedule_day", rent_schedule_day, RENT_DAYS, "a day of the month"),
            rent_schedule_hour=_parse_whole("rent_schedule_hour", rent_schedule_hour, HOURS, "an hour"),
            utility_schedule_weekday=_parse_whole(
                "utility_schedule_weekday", utility_schedule_weekday, ISO_WEEKDAYS, "an ISO weekday (1 = Monday)"
            ),
            utility_schedule_hour=_parse_whole("utility_schedule_hour", utility_schedule_hour, HOURS, "an hour"),
        )
        _check_pair("rent_schedule_day", schedule.rent_schedule_day, "rent_schedule_hour", schedule.rent_schedule_hour)
        _check_pair(
            "utility_schedule_weekday",
            schedule.utility_schedule_weekday,
            "utility_schedule_hour",
            schedule.utility_schedule_hour,
        )
        return schedule

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone or "UTC")

    def has_own(self, run_type: str) -> bool:
        """Whether the organization bills `run_type` on its own schedule (else: the default cron)."""
        if run_type == RunType.MONTHLY_RENT:
            return self.rent_schedule_day is not None
        return self.utility_schedule_weekday is not None

    def describe(self, run_type: str) -> str:
        """ "day 20 at 06:00 America/New_York", "Monday at 07:00 UTC", or "default"."""
        if not self.has_own(run_type):
            return "default"
        zone = self.timezone or "UTC"
        if run_type == RunType.MONTHLY_RENT:
            return f"day {self.rent_schedule_day} at {self.rent_schedule_hour:02d}:00 {zone}"
        return f"{WEEKDAY_NAMES[self.utility_schedule_weekday - 1]} at {self.utility_schedule_hour:02d}:00 {zone}"


def _check_pair(first: str, first_value: int | None, second: str, second_value: int | None) -> None:
    if (first_value is None) != (second_value is None):
        given, value, missing = (first, first_value, second) if second_value is None else (second, second_value, first)
        raise ValueError(
            f"{given} is {value!r} but {missing} is null; expected both set (the organization's own schedule) "
            "or both null (the default schedule)"
        )


@dataclass(frozen=True)
class Occurrence:
    """One due time of an organization's own schedule."""

    organization_id: int
    run_type: str
    due_at: datetime  # UTC
    local_due_at: datetime  # in the organization's time zone
    period: BillingPeriod  # what it bills: rent's next month, utility's local month
    # "Billed for this": rent's billing month (its first day), utility's local date.
    period_key: date


def local_instant(zone: ZoneInfo, day: date, hour: int) -> tuple[datetime, datetime]:
    """(UTC, local) of `hour`:00 on `day` in `zone`; an hour the clocks skip maps to the first instant
    after the gap, an hour they repeat to its first occurrence (fold=0 in both cases)."""
    local = datetime.combine(day, time(hour), tzinfo=zone)
    utc = local.astimezone(UTC)
    return utc, utc.astimezone(zone)


def rent_occurrence(schedule: OrganizationSchedule, year: int, month: int) -> Occurrence:
    """The rent due time in local month (year, month): it drafts the month after."""
    day = date(year, month, schedule.rent_schedule_day)
    due_at, local = local_instant(schedule.zone, day, schedule.rent_schedule_hour)
    period = BillingPeriod.for_month(year, month).next()
    return Occurrence(schedule.organization_id, RunType.MONTHLY_RENT.value, due_at, local, period, period.start)


def utility_occurrence(schedule: OrganizationSchedule, day: date) -> Occurrence:
    """The utility due time on local date `day` (a day of the organization's weekday)."""
    due_at, local = local_instant(schedule.zone, day, schedule.utility_schedule_hour)
    return Occurrence(
        schedule.organization_id, RunType.UTILITY.value, due_at, local, BillingPeriod.containing(day), day
    )


def _candidates(schedule: OrganizationSchedule, run_type: str, first: date, last: date) -> list[Occurrence]:
    """The occurrences whose local date is between `first` and `last`, a day of margin included."""
    if run_type == RunType.MONTHLY_RENT:
        occurrences, year, month = [], first.year, first.month
        while (year, month) <= (last.year, last.month):
            occurrences.append(rent_occurrence(schedule, year, month))
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        return occurrences
    offset = (schedule.utility_schedule_weekday - first.isoweekday()) % 7
    days = (last - first).days
    return [utility_occurrence(schedule, first + timedelta(days=d)) for d in range(offset, days + 1, 7)]


def occurrences_between(
    schedule: OrganizationSchedule, run_type: str, after: datetime, until: datetime
) -> list[Occurrence]:
    """The organization's own due times in (after, until], in order; none without its own schedule."""
    if not schedule.has_own(run_type):
        return []
    zone = schedule.zone
    # Local dates a day wider on each side: an instant's local date differs from its UTC date.
    first = after.astimezone(zone).date() - timedelta(days=1)
    last = until.astimezone(zone).date() + timedelta(days=1)
    if run_type == RunType.MONTHLY_RENT:
        first = first.replace(day=1)
    return [o for o in _candidates(schedule, run_type, first, last) if after < o.due_at <= until]


def due_occurrence(schedule: OrganizationSchedule, run_type: str, tick: datetime) -> Occurrence | None:
    """The occurrence a tick at `tick` bills if nothing billed it yet: the latest due at or before
    the tick and less than CATCH_UP before it. None without an own schedule or with nothing due that recently."""
    occurrences = occurrences_between(schedule, run_type, tick - CATCH_UP, tick)
    return occurrences[-1] if occurrences else None


def next_occurrence(schedule: OrganizationSchedule, run_type: str, after: datetime) -> Occurrence | None:
    """The organization's next own due time after `after` (None without an own schedule)."""
    occurrences = occurrences_between(schedule, run_type, after, after + timedelta(days=62))
    return occurrences[0] if occurrences else None
