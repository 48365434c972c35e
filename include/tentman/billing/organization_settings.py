"""Per-organization billing settings: an invoicing hold and the organization's own proration method.

Table `tentman_billing.organization_billing_settings` (one row per organization, or none: the defaults, no hold and
the platform's method) and `organization_billing_settings_audit` (one row per change: who, when, the
values before and after). Other TentMan services read and write both; these functions are how the
billing bundle does, on the caller's connection and transaction (the caller commits).

Rules (docs/operations.md "Billing settings per organization"):
- a hold needs a reason; clearing the hold clears the reason (the audit keeps it);
- `proration_method` is one of tentman.names.ProrationMethod, or None for the platform default;
- a change that changes nothing writes nothing; every other change writes its audit row in the
  same transaction as the settings, so neither exists without the other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tentman.billing.locking import lock_organization
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
    updated_at: datetime | None = None
    updated_by: str | None = None

    @property
    def effective_proration_method(self) -> ProrationMethod:
        """The method this organization is billed with when a run does not set one."""
        return ProrationMethod.parse(self.proration_method)  # None: the platform default

    def to_dict(self) -> dict:
        return asdict(self)


_SELECT = f"""
    SELECT o.id AS organization_id, coalesce(s.billing_hold, false) AS billing_hold, s.hold_reason,
           s.proration_method, s.updated_at, s.updated_by
    FROM organizations o LEFT JOIN {BILLING_SETTINGS_TABLE} s ON s.organization_id = o.id
"""


def billing_settings(conn: Connection, organization_id: int) -> BillingSettings:
    """The organization's settings (the defaults when it has no row); UnknownOrganization if it does not exist."""
    row = conn.execute(sa.text(f"{_SELECT} WHERE o.id = :org"), {"org": organization_id}).one_or_none()
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
    return True, reason


def change_billing_settings(
    conn: Connection,
    organization_id: int,
    *,
    billing_hold: object,
    hold_reason: object,
    proration_method: object,
    updated_by: str,
) -> tuple[BillingSettings, bool]:
    """Set the organization's settings and write the audit row, on the caller's transaction.

    Returns (the settings now, whether anything changed). Raises ValueError naming a bad value
    (UnknownOrganization for an id that does not exist) before anything is written.
    """
    hold, reason = _parse_hold(billing_hold, hold_reason)
    method = parse_proration_method(proration_method)
    if not updated_by or not updated_by.strip():
        raise ValueError(f"updated_by {updated_by!r} is empty; expected the name of the user making the change")
    # Two changes of the same organization take turns: each audit row's "old" is the previous "new".
    lock_organization(conn, "billing_settings", organization_id)
    old = billing_settings(conn, organization_id)
    if (old.billing_hold, old.hold_reason, old.proration_method) == (hold, reason, method):
        return old, False
    values = {
        "org": organization_id,
        "hold": hold,
        "reason": reason,
        "method": method,
        "by": updated_by,
        "old_hold": old.billing_hold,
        "old_reason": old.hold_reason,
        "old_method": old.proration_method,
    }
    conn.execute(
        sa.text(
            f"""
            INSERT INTO {BILLING_SETTINGS_TABLE}
                (organization_id, billing_hold, hold_reason, proration_method, updated_at, updated_by)
            VALUES (:org, :hold, :reason, :method, now(), :by)
            ON CONFLICT (organization_id) DO UPDATE
            SET billing_hold = excluded.billing_hold, hold_reason = excluded.hold_reason,
                proration_method = excluded.proration_method, updated_at = excluded.updated_at,
                updated_by = excluded.updated_by
            """
        ),
        values,
    )
    conn.execute(
        sa.text(
            f"""
            INSERT INTO {BILLING_SETTINGS_AUDIT_TABLE}
                (organization_id, changed_at, changed_by, old_billing_hold, new_billing_hold,
                 old_hold_reason, new_hold_reason, old_proration_method, new_proration_method)
            VALUES (:org, now(), :by, :old_hold, :hold, :old_reason, :reason, :old_method, :method)
            """
        ),
        values,
    )
    return billing_settings(conn, organization_id), True


def settings_audit(conn: Connection, organization_id: int, limit: int = 100) -> list[sa.Row]:
    """The organization's changes, newest first."""
    return list(
        conn.execute(
            sa.text(
                f"""
                SELECT * FROM {BILLING_SETTINGS_AUDIT_TABLE} WHERE organization_id = :org
                ORDER BY changed_at DESC, id DESC LIMIT :limit
                """
            ),
            {"org": organization_id, "limit": limit},
        )
    )
