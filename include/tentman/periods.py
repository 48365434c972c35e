"""Billing periods: one calendar month, resolved from a run's parameters or its logical date."""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


@dataclass(frozen=True, order=True)
class BillingPeriod:
    """A calendar month [start, end], both days inclusive."""

    start: date
    end: date

    @classmethod
    def for_month(cls, year: int, month: int) -> "BillingPeriod":
        return cls(date(year, month, 1), date(year, month, calendar.monthrange(year, month)[1]))

    @classmethod
    def containing(cls, day: date) -> "BillingPeriod":
        return cls.for_month(day.year, day.month)

    @classmethod
    def parse(cls, billing_month: object) -> "BillingPeriod":
        """Parse a `"YYYY-MM"` billing month, naming the bad value when it is not one."""
        expected = "expected 'YYYY-MM' with a month from 01 to 12 (e.g. '2026-02'), or null"
        if not isinstance(billing_month, str):
            raise ValueError(f"billing_month {billing_month!r} is not a string; {expected}")
        match = _MONTH.match(billing_month)
        if not match:
            raise ValueError(f"billing_month {billing_month!r} is not a valid month; {expected}")
        year, month = int(match.group(1)), int(match.group(2))
        if not 1 <= month <= 12 or year < 1900:
            raise ValueError(f"billing_month {billing_month!r} is not a valid month; {expected}")
        return cls.for_month(year, month)

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    @property
    def label(self) -> str:
        return f"{self.start:%Y-%m}"

    def next(self) -> "BillingPeriod":
        return BillingPeriod.containing(self.end + timedelta(days=1))

    def to_dict(self) -> dict:
        return {"billing_period_start": self.start.isoformat(), "billing_period_end": self.end.isoformat()}

    @classmethod
    def from_dict(cls, data: dict) -> "BillingPeriod":
        return cls(date.fromisoformat(data["billing_period_start"]), date.fromisoformat(data["billing_period_end"]))


def _utc_day(moment: datetime) -> date:
    if moment.tzinfo is None:
        raise ValueError(f"run date {moment!r} has no time zone; expected an aware UTC datetime")
    return moment.astimezone(timezone.utc).date()


def rent_period_for_run(moment: datetime) -> BillingPeriod:
    """The rent run of a month bills the next month: the Jan 26 run bills February."""
    return BillingPeriod.containing(_utc_day(moment)).next()


def utility_period_for_run(moment: datetime) -> BillingPeriod:
    """The utility run bills the month its logical date falls in."""
    return BillingPeriod.containing(_utc_day(moment))
