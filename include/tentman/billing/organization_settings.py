"""Per-organization billing settings: an invoicing hold, the organization's own proration method, and
its time zone and own rent and utility schedules (tentman.billing.schedules).

Table `tentman_billing.organization_billing_settings` (one row per organization, or none: the defaults, no hold and
the platform's method) and `organization_billing_settings_audit` (one row per change: who, when, the
values before and after). Other TentMan services read and write both; these functions are how the
billing bundle does, on the caller's connection and transaction (the caller commits).

Rules (docs/operations.md "Billing settings per organization"):
- a hold needs a reason; clearing the hold clears the reason (the audit keeps it);
- `proration_method` is one of tentman.names.ProrationMethod, or None for the platform default;
- `timezone` is an IANA name or None (UTC); the schedule fields come in pairs (a day or weekday and
  its hour, both set or both None) within the ranges tentman.billing.schedules states;
- a change leaves the schedule fields it does not name as they are (the page's hold switch does not
  name them);
- a change that changes nothing writes nothing; every other change writes its audit row in the
  same transaction as the settings, so neither exists without the other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tentman.billing.locking import lock_organization
from tentman.billing.schedules import OrganizationSchedule
from tentman.db import execute
from tentman.names import (
    BILLING_SETTINGS_AUDIT_TABLE,
    BILLING_SETTINGS_TABLE,
    DEFAULT_PRORATION_METHOD,
    ProrationMethod,
)

# What the page shows and a reason may hold; longer is a paste gone wrong, not a reason.
MAX_HOLD_REASON = 500


class UnknownOrganization(ValueError):
    """The organization named does not exist (the API answers 404)."""


@dataclass(frozen=True)
class BillingSettings:
    """An organization's settings as stored; `updated_at` is None when it has no row (the defaults)."""

    organization_id: int
    billing_hold: bool = False
    hold_reason: str | None = None
    proration_method: str | None = None
    timezone: str | None = None
    rent_schedule_day: int | None = None
    rent_schedule_hour: int | None = None
    utility_schedule_weekday: int | None = None
    utility_schedule_hour: int | None = None
    updated_at: datetime | None = None
    updated_by: str | None = None

    @property
    def schedule(self) -> OrganizationSchedule:
        return OrganizationSchedule(self.organization_id, **{name: getattr(self, name) for name in SCHEDULE_FIELDS})

    @property
    def effective_proration_method(self) -> ProrationMethod:
        """The method this organization is billed with when a run does not set one."""
        return ProrationMethod.parse(self.proration_method)  # None: the platform default

    def to_dict(self) -> dict:
        return asdict(self)


# The schedule's settings, in the order of the table, the API and the audit.
SCHEDULE_FIELDS = (
    "timezone",
    "rent_schedule_day",
    "rent_schedule_hour",
    "utility_schedule_weekday",
    "utility_schedule_hour",
)
# Every stored setting but the bookkeeping (updated_at, updated_by): what a change compares and audits.
SETTING_FIELDS = ("billing_hold", "hold_reason", "proration_method", *SCHEDULE_FIELDS)
# A change's value for a field it does not name: the stored one stays.
UNCHANGED = object()

_SELECT = f"""
    SELECT o.id AS organization_id, coalesce(s.billing_hold, false) AS billing_hold, s.hold_reason,
           s.proration_method, {", ".join(f"s.{name}" for name in SCHEDULE_FIELDS)}, s.updated_at, s.updated_by
    FROM organizations o LEFT JOIN {BILLING_SETTINGS_TABLE} s ON s.organization_id = o.id
"""


def billing_settings(conn: Connection, organization_id: int) -> BillingSettings:
    """The organization's settings (the defaults when it has no row); UnknownOrganization if it does not exist."""
    row = execute(conn, f"{_SELECT} WHERE o.id = :org", {"org": organization_id}).one_or_none()
    if row is None:
        raise UnknownOrganization(
            f"organization {organization_id!r} does not exist; expected the id of an organization"
        )
    return BillingSettings(**row._mapping)


def parse_proration_method(value: object) -> str | None:
    """An organization's method: one of the four names, or None (the platform default)."""
    if value is None:
        return None
    try:
        return ProrationMethod.parse(value).value
    except ValueError as exc:  # an organization may also have no method of its own: say so
        raise ValueError(f"{exc}, or null for the platform default ({DEFAULT_PRORATION_METHOD.value})") from None


def _parse_hold(billing_hold: object, hold_reason: object) -> tuple[bool, str | None]:
    if not isinstance(billing_hold, bool):
        raise ValueError(f"billing_hold {billing_hold!r} is not valid; expected true or false")
    if hold_reason is not None and not isinstance(hold_reason, str):
        raise ValueError(f"hold_reason {hold_reason!r} is not valid; expected text")
    reason = (hold_reason or "").strip()
    if not billing_hold:
        return False, None
    if not reason:
        raise ValueError(
            f"hold_reason {hold_reason!r} is empty; a billing hold needs a reason "
            "(e.g. 'migration from another system until 2027-03')"
        )
    if len(reason) > MAX_HOLD_REASON:
        raise ValueError(f"hold_reason is {len(reason)} characters long; expected at most {MAX_HOLD_REASON}")
    if "\x00" in reason:  # PostgreSQL's text cannot hold it: the insert would fail
        raise ValueError(f"hold_reason {reason!r} contains a NUL character (\\x00); expected text without it")
    return True, reason


def change_billing_settings(
    conn: Connection,
    organization_id: int,
    *,
    billing_hold: object,
    hold_reason: object,
    proration_method: object,
    updated_by: str,
    **schedule: object,
) -> tuple[BillingSettings, bool]:
    """Set the organization's settings and write the audit row, on the caller's transaction.

    `schedule`: any of SCHEDULE_FIELDS; one not given (or UNCHANGED) keeps its stored value.
    Returns (the settings now, whether anything changed). Raises ValueError naming a bad value
    (UnknownOrganization for an id that does not exist) before anything is written.
    """
    unknown = sorted(set(schedule) - set(SCHEDULE_FIELDS))
    if unknown:
        raise TypeError(f"unknown settings {unknown}; expected some of {', '.join(SCHEDULE_FIELDS)}")
    hold, reason = _parse_hold(billing_hold, hold_reason)
    method = parse_proration_method(proration_method)
    if not updated_by or not updated_by.strip():
        raise ValueError(f"updated_by {updated_by!r} is empty; expected the name of the user making the change")
    # Two changes of the same organization take turns: each audit row's "old" is the previous "new".
    lock_organization(conn, "billing_settings", organization_id)
    old = billing_settings(conn, organization_id)
    given = {name: schedule.get(name, UNCHANGED) for name in SCHEDULE_FIELDS}
    merged = {name: getattr(old, name) if value is UNCHANGED else value for name, value in given.items()}
    parsed = OrganizationSchedule.parse(organization_id, **merged)
    new = {
        "billing_hold": hold,
        "hold_reason": reason,
        "proration_method": method,
        **{name: getattr(parsed, name) for name in SCHEDULE_FIELDS},
    }
    if all(getattr(old, name) == new[name] for name in SETTING_FIELDS):
        return old, False
    values = {"org": organization_id, "by": updated_by, **new, **{f"old_{n}": getattr(old, n) for n in SETTING_FIELDS}}
    columns = ", ".join(SETTING_FIELDS)
    execute(
        conn,
        f"""
            INSERT INTO {BILLING_SETTINGS_TABLE} (organization_id, {columns}, updated_at, updated_by)
            VALUES (:org, {", ".join(f":{n}" for n in SETTING_FIELDS)}, now(), :by)
            ON CONFLICT (organization_id) DO UPDATE
            SET {", ".join(f"{n} = excluded.{n}" for n in SETTING_FIELDS)},
                updated_at = excluded.updated_at, updated_by = excluded.updated_by
            """,
        values,
    )
    execute(
        conn,
        f"""
            INSERT INTO {BILLING_SETTINGS_AUDIT_TABLE}
                (organization_id, changed_at, changed_by,
                 {", ".join(f"old_{n}, new_{n}" for n in SETTING_FIELDS)})
            VALUES (:org, now(), :by, {", ".join(f":old_{n}, :{n}" for n in SETTING_FIELDS)})
            """,
        values,
    )
    return billing_settings(conn, organization_id), True


def settings_audit(conn: Connection, organization_id: int, limit: int = 100) -> list[sa.Row]:
    """The organization's changes, newest first."""
    return list(
        execute(
            conn,
            f"""
                SELECT * FROM {BILLING_SETTINGS_AUDIT_TABLE} WHERE organization_id = :org
                ORDER BY changed_at DESC, id DESC LIMIT :limit
                """,
            {"org": organization_id, "limit": limit},
        )
    )
