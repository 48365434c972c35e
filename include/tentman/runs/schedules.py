"""The schedules DAG's steps: which organizations a tick bills, claimed so each period is billed once.

The DAG (`tentman_organization_schedules`) ticks every hour. A tick at `T` (its logical date; a
manual run's `run_after`) looks at every active organization with a schedule of its own and takes,
per billing type, its latest due time at or before `T` within tentman.billing.schedules.CATCH_UP
(the *occurrence*). The organization is billed for that occurrence unless the period was already
billed. **Already billed for this period** means either of:

1. a *claim*: a row of SCHEDULE_CLAIMS_TABLE for (organization, run type, period key) written by
   another run of this DAG. The period key is rent's billing month, or utility's local date of the
   due time. A tick inserts its claims with `ON CONFLICT DO NOTHING` and bills only the rows that
   are its own, so two ticks (a re-run, a manual run, a backfill beside the scheduled ticks) can
   never both bill one period: the primary key admits one claim, whichever commits first.
2. for rent only, an `invoice_runs` row of another DAG run for that organization and billing month
   whose status is not `failed`: the default cron's run billed it before the organization had a
   schedule of its own (or while its rent day was later), or a manual run naming it did. Moving
   the rent day past a date already billed for the coming month therefore bills nothing again.

Why each case bills once:
- A missed tick (scheduler down, DAG paused) leaves its occurrence unclaimed; the next tick that
  runs finds it still due (within CATCH_UP) and claims it.
- A tick that runs twice, or a cleared `list_organizations` task, finds the claims of its own run
  and bills the same organizations again, for the same periods, into the same `invoice_runs` rows
  (keyed by DAG run and organization): the engines update the drafts they own and never duplicate
  one. Any other tick finds the claim and leaves the organization alone.
- An organization whose billing failed after its retries gets its claim released by the
  aggregation step, so the next tick retries it (within CATCH_UP); one on hold keeps its claim, as
  the default run's on-hold row counts as that run's answer for the period.
- An organization due for rent and utility in one tick is billed for rent; its utility is still
  due, unclaimed, at the next tick (a DAG run has one `invoice_runs` row per organization).
- The default crons leave out every organization with a schedule of its own for that billing type
  (tentman.runs.organizations.list_organizations); a run naming organizations bills them anyway.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tentman.billing.organization_settings import SCHEDULE_FIELDS
from tentman.billing.schedules import Occurrence, OrganizationSchedule, due_occurrence, known_time_zone
from tentman.db import UnitOfWork
from tentman.names import BILLING_SETTINGS_TABLE, SCHEDULE_CLAIMS_TABLE, RunStatus, RunType
from tentman.runs.billing_run import BillingRun
from tentman.runs.record import BillingRunFailed, record_invoice_runs

log = logging.getLogger(__name__)

_SCHEDULE_COLUMNS = ", ".join(SCHEDULE_FIELDS)


@dataclass(frozen=True)
class ScheduledBilling:
    """One organization billed by one tick: its id and the run (type and period) it is billed with."""

    organization_id: int
    run: BillingRun

    def to_dict(self) -> dict:
        """The organization task's arguments (the DAG maps the task over these)."""
        return {"organization_id": self.organization_id, "run": self.run.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> ScheduledBilling:
        return cls(data["organization_id"], BillingRun.from_dict(data["run"]))


def organization_schedules(conn: Connection, organization_ids: list[int] | None = None) -> list[OrganizationSchedule]:
    """The active organizations with a schedule of their own (rent or utility), by id."""
    rows = conn.execute(
        sa.text(
            f"""
            SELECT o.id AS organization_id, {_SCHEDULE_COLUMNS}
            FROM organizations o JOIN {BILLING_SETTINGS_TABLE} s ON s.organization_id = o.id
            WHERE o.is_active
              AND (s.rent_schedule_day IS NOT NULL OR s.utility_schedule_weekday IS NOT NULL)
              AND (CAST(:ids AS bigint[]) IS NULL OR o.id = ANY(:ids))
            ORDER BY o.id
            """
        ),
        {"ids": organization_ids},
    )
    return [OrganizationSchedule(**row._mapping) for row in rows]


def due_occurrences(schedules: list[OrganizationSchedule], tick: datetime) -> list[Occurrence]:
    """Every organization's due occurrence at `tick`, rent first, then utility, by organization id."""
    billable = []
    for schedule in schedules:
        if known_time_zone(schedule.timezone):
            billable.append(schedule)
        else:
            # A time zone another service stored that this machine's zone data lacks: the
            # others are billed; this one waits for a valid zone (the API refuses such names).
            log.error(
                "organization #%d has the unknown time zone %r: not billed on its own schedule until it "
                "is corrected (an IANA name, e.g. 'America/New_York')",
                schedule.organization_id,
                schedule.timezone,
            )
    due = []
    for run_type in RunType:
        for schedule in billable:
            occurrence = due_occurrence(schedule, run_type, tick)
            if occurrence is not None:
                due.append(occurrence)
    return due


def list_scheduled_billings(
    engine: Engine,
    *,
    tick: datetime,
    dag_id: str,
    dag_run_id: str,
    organization_ids: list[int] | None = None,
    dry_run: bool = False,
) -> list[ScheduledBilling]:
    """The organizations this tick bills, each with its run; their periods claimed for this DAG run
    (a dry run claims nothing and lists what a real tick would bill)."""
    with UnitOfWork(engine) as uow:
        conn = uow.connection
        schedules = organization_schedules(conn, organization_ids)
        due = due_occurrences(schedules, tick)
        claim = {"dag_id": dag_id, "dag_run_id": dag_run_id, "dry_run": dry_run}
        rent = _claim(conn, [o for o in due if o.run_type == RunType.MONTHLY_RENT], **claim)
        # A DAG run has one invoice_runs row per organization: an organization billed for rent by
        # this tick is billed for its due utility by the next one (still due, not claimed).
        billed_for_rent = {o.organization_id for o in rent}
        utility_due = [o for o in due if o.run_type == RunType.UTILITY]
        utility = _claim(conn, [o for o in utility_due if o.organization_id not in billed_for_rent], **claim)
        deferred = [o for o in utility_due if o.organization_id in billed_for_rent]
        if not dry_run:
            uow.commit()
    billed = rent + utility
    log.info(
        "Tick %s: %d organizations bill on their own schedule, %d occurrences due, %d to bill now%s",
        tick.isoformat(),
        len(schedules),
        len(due),
        len(billed),
        " (dry run: nothing claimed)" if dry_run else "",
    )
    if deferred:
        log.info(
            "%d organizations due for rent and utility at once: rent now, utility at the next tick (%s)",
            len(deferred),
            ", ".join(f"#{o.organization_id}" for o in deferred),
        )
    for occurrence in billed:
        log.info(
            "organization #%d: %s for %s, due %s (%s local)",
            occurrence.organization_id,
            occurrence.run_type,
            occurrence.period.label,
            occurrence.due_at.isoformat(),
            occurrence.local_due_at.isoformat(),
        )
    return [
        ScheduledBilling(
            o.organization_id,
            BillingRun(
                run_type=o.run_type,
                billing_period_start=o.period.start.isoformat(),
                billing_period_end=o.period.end.isoformat(),
                proration_method=None,  # each organization's own
                dry_run=dry_run,
                # None: the organization is billed as in a run for all organizations (a hold stops it).
                organization_ids=None,
            ),
        )
        for o in billed
    ]


def _claim(conn: Connection, due: list[Occurrence], *, dag_id: str, dag_run_id: str, dry_run: bool) -> list[Occurrence]:
    """Claim the occurrences not billed yet for their period (the module's docstring); return those
    claimed by this DAG run, now or by an earlier attempt of it."""
    if not due:
        return []
    values = {
        "orgs": [o.organization_id for o in due],
        "run_types": [o.run_type for o in due],
        "keys": [o.period_key for o in due],
        "due": [o.due_at for o in due],
        "starts": [o.period.start for o in due],
        "ends": [o.period.end for o in due],
        "dag_id": dag_id,
        "dag_run_id": dag_run_id,
        "rent": RunType.MONTHLY_RENT,
        "failed": RunStatus.FAILED,
    }
    # The occurrences whose period no other run billed: no claim of another run, no other run's
    # invoice_runs row for rent's billing month (unless it failed).
    unbilled = f"""
        SELECT d.* FROM unnest(CAST(:orgs AS bigint[]), CAST(:run_types AS text[]), CAST(:keys AS date[]),
                               CAST(:due AS timestamptz[]), CAST(:starts AS date[]), CAST(:ends AS date[]))
             AS d(organization_id, run_type, period_key, due_at, billing_period_start, billing_period_end)
        WHERE NOT EXISTS (
                SELECT 1 FROM {SCHEDULE_CLAIMS_TABLE} c
                WHERE c.organization_id = d.organization_id AND c.run_type = d.run_type
                  AND c.period_key = d.period_key AND (c.dag_id, c.dag_run_id) <> (:dag_id, :dag_run_id))
          AND NOT (d.run_type = :rent AND EXISTS (
                SELECT 1 FROM invoice_runs r
                WHERE r.organization_id = d.organization_id AND r.run_type = d.run_type
                  AND r.billing_period_start = d.billing_period_start AND r.status <> :failed
                  AND (r.dag_id, r.dag_run_id) <> (:dag_id, :dag_run_id)))
    """
    if dry_run:
        rows = conn.execute(sa.text(unbilled), values).all()
    else:
        rows = conn.execute(
            sa.text(
                f"""
                WITH claimed AS (
                    INSERT INTO {SCHEDULE_CLAIMS_TABLE} AS c
                        (organization_id, run_type, period_key, due_at, billing_period_start,
                         billing_period_end, dag_id, dag_run_id)
                    SELECT u.*, :dag_id, :dag_run_id FROM ({unbilled}) u
                    ON CONFLICT (organization_id, run_type, period_key) DO UPDATE
                        -- This run's own claim (a re-run of the task): keep it, return it.
                        SET claimed_at = c.claimed_at
                        WHERE (c.dag_id, c.dag_run_id) = (excluded.dag_id, excluded.dag_run_id)
                    RETURNING c.organization_id, c.run_type, c.period_key
                )
                SELECT organization_id, run_type, period_key FROM claimed
                """
            ),
            values,
        ).all()
    mine = {(r.organization_id, r.run_type, r.period_key) for r in rows}
    return [o for o in due if (o.organization_id, o.run_type, o.period_key) in mine]


def release_failed_claims(conn: Connection, *, dag_id: str, dag_run_id: str) -> int:
    """Give back the claims of this run's organizations whose billing failed, so the next tick
    retries them; returns how many."""
    return conn.execute(
        sa.text(
            f"""
            DELETE FROM {SCHEDULE_CLAIMS_TABLE} c
            USING invoice_runs r
            WHERE c.dag_id = :dag_id AND c.dag_run_id = :dag_run_id
              AND r.dag_id = c.dag_id AND r.dag_run_id = c.dag_run_id
              AND r.organization_id = c.organization_id AND r.run_type = c.run_type
              AND r.status = :failed
            """
        ),
        {"dag_id": dag_id, "dag_run_id": dag_run_id, "failed": RunStatus.FAILED},
    ).rowcount


def record_scheduled_billings(
    engine: Engine, billings: list[ScheduledBilling] | None, results: list[dict], *, dag_id: str, dag_run_id: str
) -> list[dict]:
    """The schedules DAG's aggregation: complete each run's `invoice_runs` rows (one call per billing
    type and period), give back the claims of the organizations that failed, then fail the DAG run
    if any did (BillingRunFailed naming every one)."""
    if billings is None:
        raise BillingRunFailed("the due organizations could not be listed; nothing was billed (see that task's log)")
    by_run: dict[BillingRun, list[int]] = {}
    for billing in billings:
        by_run.setdefault(billing.run, []).append(billing.organization_id)
    summary, failures = [], []
    for run, organization_ids in by_run.items():
        ids = set(organization_ids)
        try:
            summary += record_invoice_runs(
                engine,
                run,
                organization_ids,
                [r for r in results if r.get("organization_id") in ids],
                dag_id=dag_id,
                dag_run_id=dag_run_id,
            )
        except BillingRunFailed as exc:
            failures.append(exc)
    if billings and not billings[0].run.dry_run:
        with UnitOfWork(engine) as uow:
            released = release_failed_claims(uow.connection, dag_id=dag_id, dag_run_id=dag_run_id)
            uow.commit()
        if released:
            log.warning("%d failed organizations will be retried by the next tick (claims released)", released)
    if failures:
        raise BillingRunFailed(
            "; ".join(str(f) for f in failures), organizations=[o for f in failures for o in f.organizations]
        )
    return summary
