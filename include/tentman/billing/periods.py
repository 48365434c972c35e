"""Billing periods: one calendar month, resolved from a run's parameters or its logical date.

Month arithmetic is pendulum's, as in Airflow's own examples: `start_of("month")`,
`end_of("month")`, `add(months=1)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime

import pendulum

from tentman.names import BILLING_MONTH_FORMAT, BILLING_MONTH_PATTERN

_BILLING_MONTH = re.compile(BILLING_MONTH_PATTERN)


@dataclass(frozen=True, order=True)
class BillingPeriod:
    """A calendar month [start, end], both days inclusive."""

    start: date
    end: date

    @classmethod
    def containing(cls, day: date) -> BillingPeriod:
        month = pendulum.date(day.year, day.month, day.day)
        return cls(_plain(month.start_of("month")), _plain(month.end_of("month")))

    @classmethod
    def for_month(cls, year: int, month: int) -> BillingPeriod:
        return cls.containing(date(year, month, 1))

    @classmethod
    def parse(cls, billing_month: object) -> BillingPeriod:
        """Parse a `"YYYY-MM"` billing month, naming the bad value when it is not one."""
        expected = f"expected '{BILLING_MONTH_FORMAT}' with a month from 01 to 12 (e.g. '2026-02'), or null"
        if not isinstance(billing_month, str):
            raise ValueError(f"billing_month {billing_month!r} is not a string; {expected}")
        if not _BILLING_MONTH.match(billing_month) or int(billing_month[:4]) < 1900:
            raise ValueError(f"billing_month {billing_month!r} is not a valid month; {expected}")
        return cls.for_month(int(billing_month[:4]), int(billing_month[5:7]))

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    @property
    def label(self) -> str:
        return f"{self.start:%Y-%m}"

    def next(self) -> BillingPeriod:
        return BillingPeriod.containing(pendulum.date(self.start.year, self.start.month, 1).add(months=1))

    def to_dict(self) -> dict:
        return {"billing_period_start": self.start.isoformat(), "billing_period_end": self.end.isoformat()}

    @classmethod
    def from_dict(cls, data: dict) -> BillingPeriod:
        return cls(date.fromisoformat(data["billing_period_start"]), date.fromisoformat(data["billing_period_end"]))


def _plain(day: pendulum.Date) -> date:
    # A plain datetime.date: periods are compared, hashed and bound as SQL parameters.
    return date(day.year, day.month, day.day)


def _utc_month(moment: datetime) -> pendulum.DateTime:
    if moment.tzinfo is None:
        raise ValueError(f"run date {moment!r} has no time zone; expected an aware UTC datetime")
    return pendulum.instance(moment).in_timezone("UTC").start_of("month")


def rent_period_for_run(moment: datetime) -> BillingPeriod:
    """The rent run of a month bills the next month: the Jan 26 run bills February."""
    return BillingPeriod.containing(_utc_month(moment).add(months=1).date())


def utility_period_for_run(moment: datetime) -> BillingPeriod:
    """The utility run bills the month its logical date falls in."""
    return BillingPeriod.containing(_utc_month(moment).date())
