"""The per-organization lock that makes overlapping runs take turns, and in which a real run goes
before a preview."""

from __future__ import annotations

import logging

from sqlalchemy.engine import Connection

from tentman.db import execute
from tentman.names import PREVIEW_APPLICATION_NAME

log = logging.getLogger(__name__)

# How long a real run waits for the preview sessions it ended to be gone (their locks with them)
# before it looks again; a session ends in milliseconds.
PREVIEW_EXIT_WAIT_MS = 5000

_TRY_LOCK = "SELECT pg_try_advisory_xact_lock(hashtextextended(:key, 0))"
_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"

# The preview sessions (by their application_name) that hold the advisory lock `:key` or wait for
# it, and that this session may end: its role has the privileges of theirs (the same role, as when
# the page and the DAGs share the `tentman_db` connection) or of pg_signal_backend, and only a
# superuser ends a superuser's session. pg_locks shows a bigint advisory key as its high and low
# 32 bits (classid, objid) with objsubid 1. pg_terminate_backend(pid, timeout) returns once the
# session is gone, or false (and a warning) after the timeout.
_END_PREVIEWS = """
    WITH lock AS (SELECT hashtextextended(:key, 0) AS key)
    SELECT a.pid, pg_terminate_backend(a.pid, :exit_wait_ms) AS ended
    FROM lock
    JOIN pg_locks l ON l.locktype = 'advisory' AND l.objsubid = 1
     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
     AND l.classid::bigint = (lock.key >> 32) & 4294967295 AND l.objid::bigint = lock.key & 4294967295
    JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE a.application_name = :preview AND a.pid <> pg_backend_pid()
      AND (NOT EXISTS (SELECT FROM pg_roles r WHERE r.oid = a.usesysid AND r.rolsuper)
           OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user))
      AND (pg_has_role(a.usesysid, 'USAGE') OR pg_has_role('pg_signal_backend', 'USAGE'))
"""


def organization_lock_key(scope: str, organization_id: int) -> str:
    """The name of an organization's lock on `scope` (hashed into the advisory lock's key)."""
    return f"tentman:{scope}:{organization_id}"


def lock_organization(conn: Connection, scope: str, organization_id: int) -> None:
    """Serialise work of one organization on one `scope` (an invoice type, its billing settings)
    until the transaction ends.

    Overlapping runs (a manual trigger beside the scheduled run, backfills, a cleared task) then
    take turns per organization instead of racing or deadlocking on the same invoices, while rent
    and utility billing, and different organizations, never wait for each other.

    A preview (a session named PREVIEW_APPLICATION_NAME, tentman.billing.preview) never holds a run
    up: when the lock is taken, the previews holding it or waiting for it are ended (their
    sessions terminated, their transactions rolled back: they wrote nothing), and the lock is tried
    again. Held by another run, it is waited for as always.
    """
    key = organization_lock_key(scope, organization_id)
    while not execute(conn, _TRY_LOCK, {"key": key}).scalar():
        ended = execute(
            conn, _END_PREVIEWS, {"key": key, "preview": PREVIEW_APPLICATION_NAME, "exit_wait_ms": PREVIEW_EXIT_WAIT_MS}
        ).all()
        if not ended:
            execute(conn, _LOCK, {"key": key})  # another run holds it: take turns
            return
        log.info(
            "Ended %d preview session(s) holding or awaiting %s (pids %s)", len(ended), key, [r.pid for r in ended]
        )


def lock_organization_for_preview(conn: Connection, scope: str, organization_id: int) -> None:
    """Take the organization's lock for a preview: wait for it within the transaction's
    lock_timeout, ending nobody. A run that wants it then ends the preview (lock_organization).

    The engine's own `lock_organization` later in the same transaction finds it held by this
    session and goes on: an advisory lock is re-entrant within a session.
    """
    execute(conn, _LOCK, {"key": organization_lock_key(scope, organization_id)})
