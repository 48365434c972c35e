"""The per-organization lock that makes overlapping runs take turns."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection


def lock_organization(conn: Connection, scope: str, organization_id: int) -> None:
    """Serialise work of one organization on one `scope` (an invoice type, its billing settings)
    until the transaction ends.

    Overlapping runs (a manual trigger beside the scheduled run, backfills, a cleared task) then
    take turns per organization instead of racing or deadlocking on the same invoices, while rent
    and utility billing, and different organizations, never wait for each other.
    """
    conn.execute(
        sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
        {"key": f"tentman:{scope}:{organization_id}"},
    )
