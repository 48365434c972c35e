"""An organization's invoice currency, checked before it is billed."""

from __future__ import annotations

from sqlalchemy.engine import Connection

from tentman.db import execute


class OrganizationNotFound(LookupError):
    pass


def organization_currency(conn: Connection, organization_id: int) -> tuple[str | None, str | None]:
    """(currency, error): the organization's invoice currency, or why it cannot be used."""
    row = execute(
        conn, "SELECT currency FROM organizations WHERE id = :organization_id", {"organization_id": organization_id}
    ).one_or_none()
    if row is None:
        raise OrganizationNotFound(f"organization {organization_id} does not exist")
    currency = (row.currency or "").strip()
    if len(currency) != 3 or not currency.isalpha() or not currency.isupper():
        return None, (
            f"organization {organization_id} has currency {row.currency!r}; expected a 3-letter "
            "upper-case ISO 4217 code such as 'USD'"
        )
    return currency, None
