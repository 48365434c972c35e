"""The schedules DAG's steps without Airflow: which organizations a tick bills, each period billed once
(claims), the default runs leaving scheduled organizations out, and the settings with their audit."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa

from support.factories import add_lease, add_organization, add_statement, set_billing_settings
from tentman.billing.organization_settings import billing_settings, settings_audit
from tentman.names import BILLING_SETTINGS_TABLE, RENT_DAG_ID, SCHEDULE_CLAIMS_TABLE, SCHEDULES_DAG_ID, RunType
from tentman.runs.bill import bill_organization
from tentman.runs.organizations import list_organizations
from tentman.runs.record import BillingRunFailed
from tentman.runs.resolve import resolve_billing_period
from tentman.runs.schedules import list_scheduled_billings, record_scheduled_billings

NEW_YORK_RENT = {"timezone": "America/New_York", "rent_schedule_day": 20, "rent_schedule_hour": 6}
JANUARY_DUE = datetime(2027, 1, 20, 11, tzinfo=UTC)  # 06:00 in New York


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def schedule(engine, org, **fields):
    """The organization's own schedule (no hold, the platform's proration method)."""
    with engine.begin() as conn:
        set_billing_settings(conn, org, **fields)


def tick(engine, at: datetime, run_id: str | None = None, **kwargs):
    """One tick of the schedules DAG, its steps called in order: list, bill each, record."""
    run_id = run_id or f"scheduled__{at.isoformat()}"
    billings = list_scheduled_billings(engine, tick=at, dag_id=SCHEDULES_DAG_ID, dag_run_id=run_id, **kwargs)
    results = []
    for billing in billings:
        try:
            results.append(
                bill_organization(
                    engine, billing.run, billing.organization_id, dag_id=SCHEDULES_DAG_ID, dag_run_id=run_id
                )
            )
        except Exception:  # the task failed after its retries: the record step says so
            pass
    record_scheduled_billings(engine, billings, results, dag_id=SCHEDULES_DAG_ID, dag_run_id=run_id)
    return [(b.organization_id, b.run.run_type, b.run.period.label) for b in billings]


def rent_invoices(engine, lease) -> list[tuple]:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT billing_period_start, total FROM invoices WHERE lease_id = :l AND invoice_type = 'rent' "
                "ORDER BY billing_period_start"
            ),
            {"l": lease},
        ).all()


def runs_of(engine, org) -> list[tuple]:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT dag_id, run_type, billing_period_start, status FROM invoice_runs WHERE organization_id = :o "
                "ORDER BY started_at, id"
            ),
            {"o": org},
        ).all()


@pytest.fixture
def new_york(engine):
    """An organization in New York billing rent on the 20th at 06:00 local, and one on the default cron."""
    with engine.begin() as conn:
        ny = add_organization(conn, "Hudson Lofts")
        plain = add_organization(conn, "Plain Homes")
        ny_lease = add_lease(conn, ny, date(2025, 1, 1), None, "1800.00")
        plain_lease = add_lease(conn, plain, date(2025, 1, 1), None, "900.00")
    schedule(engine, ny, **NEW_YORK_RENT)
    return ny, plain, ny_lease, plain_lease


def test_the_tick_at_the_local_due_hour_bills_it_once_and_the_default_run_leaves_it_out(engine, new_york, caplog):
    ny, plain, ny_lease, plain_lease = new_york
    assert tick(engine, utc(2027, 1, 20, 10)) == []  # 05:00 in New York
    assert tick(engine, JANUARY_DUE) == [(ny, "monthly_rent", "2027-02")]
    assert tick(engine, utc(2027, 1, 20, 12)) == []  # claimed: nothing again
    assert rent_invoices(engine, ny_lease) == [(date(2027, 2, 1), Decimal("1800.00"))]

    # The default rent run of January 26 bills February for everyone else.
    moment = utc(2027, 1, 26, 2)
    run = resolve_billing_period(engine, run_type="monthly_rent", params={}, logical_date=moment, run_after=moment)
    with caplog.at_level(logging.INFO, logger="tentman.runs.organizations"):
        assert list_organizations(engine, run) == [plain]
    assert f"1 organizations bill monthly_rent on their own schedule ({SCHEDULES_DAG_ID})" in caplog.text
    # A run naming it bills it, whatever its schedule.
    named = resolve_billing_period(
        engine, run_type="monthly_rent", params={"organization_ids": [ny]}, logical_date=moment, run_after=moment
    )
    assert list_organizations(engine, named) == [ny]
    assert runs_of(engine, ny) == [(SCHEDULES_DAG_ID, "monthly_rent", date(2027, 2, 1), "completed")]


def test_missed_ticks_are_caught_up_once_and_a_rerun_tick_bills_the_same_rows(engine, new_york):
    ny, _, ny_lease, _ = new_york
    # The DAG was paused for the 11:00, 12:00 and 13:00 ticks: the 14:00 one bills.
    assert tick(engine, utc(2027, 1, 20, 14), run_id="r14") == [(ny, "monthly_rent", "2027-02")]
    # The same tick again (cleared, re-run): the same organization, period and invoice_runs row.
    assert tick(engine, utc(2027, 1, 20, 14), run_id="r14") == [(ny, "monthly_rent", "2027-02")]
    # A manual run of the DAG an hour later, and the next tick: nothing.
    assert tick(engine, utc(2027, 1, 20, 15), run_id="manual__x") == []
    assert tick(engine, utc(2027, 1, 20, 16), run_id="r16") == []
    assert rent_invoices(engine, ny_lease) == [(date(2027, 2, 1), Decimal("1800.00"))]
    assert runs_of(engine, ny) == [(SCHEDULES_DAG_ID, "monthly_rent", date(2027, 2, 1), "completed")]
    with engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT dag_run_id FROM {SCHEDULE_CLAIMS_TABLE}")).scalars().all() == ["r14"]


def test_a_period_the_default_run_billed_is_not_billed_again_after_moving_to_an_own_schedule(engine):
    with engine.begin() as conn:
        org = add_organization(conn, "Late Mover")
        lease = add_lease(conn, org, date(2025, 1, 1), None, "1000.00")
    moment = utc(2027, 1, 26, 2)
    run = resolve_billing_period(engine, run_type="monthly_rent", params={}, logical_date=moment, run_after=moment)
    [listed] = list_organizations(engine, run)
    bill_organization(engine, run, listed, dag_id=RENT_DAG_ID, dag_run_id="default")
    # On the 27th it moves to its own day, the 27th at 08:00 UTC: February is billed already.
    schedule(engine, org, rent_schedule_day=27, rent_schedule_hour=8)
    assert tick(engine, utc(2027, 1, 27, 9)) == []
    # Moving the rent day later (the 28th) does not bill February again either; March is billed in February.
    schedule(engine, org, rent_schedule_day=28, rent_schedule_hour=8)
    assert tick(engine, utc(2027, 1, 28, 8)) == []
    assert tick(engine, utc(2027, 2, 28, 8)) == [(org, "monthly_rent", "2027-03")]
    assert [p for p, _ in rent_invoices(engine, lease)] == [date(2027, 2, 1), date(2027, 3, 1)]


def test_a_hold_stops_it_as_it_stops_the_default_run(engine, new_york):
    ny, _, ny_lease, _ = new_york
    with engine.begin() as conn:
        set_billing_settings(conn, ny, hold=True, reason="moving banks")
    assert tick(engine, JANUARY_DUE) == [(ny, "monthly_rent", "2027-02")]
    assert rent_invoices(engine, ny_lease) == []
    assert runs_of(engine, ny) == [(SCHEDULES_DAG_ID, "monthly_rent", date(2027, 2, 1), "on_hold")]
    assert tick(engine, utc(2027, 1, 20, 12)) == []  # answered for the period, as the default run's hold row is


def test_a_failed_organization_is_retried_by_the_next_tick(engine, new_york):
    ny, _, ny_lease, _ = new_york
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE leases SET monthly_rent = 1800 WHERE id = :l"), {"l": ny_lease})
        conn.execute(
            sa.text(
                """
                CREATE FUNCTION test_fault() RETURNS trigger LANGUAGE plpgsql AS
                $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$;
                CREATE TRIGGER test_fault BEFORE INSERT ON invoices FOR EACH ROW EXECUTE FUNCTION test_fault();
                """
            )
        )
    with pytest.raises(BillingRunFailed, match="injected fault"):
        tick(engine, JANUARY_DUE, run_id="r11")
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TRIGGER test_fault ON invoices"))
    assert tick(engine, utc(2027, 1, 20, 12), run_id="r12") == [(ny, "monthly_rent", "2027-02")]
    assert rent_invoices(engine, ny_lease) == [(date(2027, 2, 1), Decimal("1800.00"))]
    assert [r.status for r in runs_of(engine, ny)] == ["failed", "completed"]


def test_rent_and_utility_due_in_one_tick_bill_rent_now_and_utility_at_the_next_tick(engine):
    with engine.begin() as conn:
        org = add_organization(conn, "Both Homes")
        lease = add_lease(conn, org, date(2025, 1, 1), None, "1000.00")
        add_statement(conn, org, lease, Decimal("41.17"), date(2026, 12, 1), date(2026, 12, 31))
    # 2027-01-20 is a Wednesday (ISO 3).
    schedule(
        engine, org, rent_schedule_day=20, rent_schedule_hour=6, utility_schedule_weekday=3, utility_schedule_hour=6
    )
    assert tick(engine, utc(2027, 1, 20, 6), dry_run=True) == [(org, "monthly_rent", "2027-02")]
    assert tick(engine, utc(2027, 1, 20, 6)) == [(org, "monthly_rent", "2027-02")]
    assert tick(engine, utc(2027, 1, 20, 7)) == [(org, "utility", "2027-01")]
    assert tick(engine, utc(2027, 1, 20, 8)) == []
    assert [(r.run_type, r.status) for r in runs_of(engine, org)] == [
        ("monthly_rent", "completed"),
        ("utility", "completed"),
    ]


def test_a_dry_run_tick_lists_what_is_due_and_claims_nothing(engine, new_york):
    ny, *_ = new_york
    assert tick(engine, JANUARY_DUE, dry_run=True) == [(ny, "monthly_rent", "2027-02")]
    with engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT count(*) FROM {SCHEDULE_CLAIMS_TABLE}")).scalar() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM invoices")).scalar() == 0
    assert tick(engine, JANUARY_DUE) == [(ny, "monthly_rent", "2027-02")]


def test_the_utility_weekday_lands_on_the_local_weekday_across_the_date_line(engine):
    with engine.begin() as conn:
        org = add_organization(conn, "Harbour Flats", currency="NZD")
        lease = add_lease(conn, org, date(2025, 1, 1))
    schedule(engine, org, timezone="Pacific/Auckland", utility_schedule_weekday=1, utility_schedule_hour=8)
    # Monday 2027-01-25 08:00 there: Sunday 19:00 UTC. Nothing finalized yet.
    assert tick(engine, utc(2027, 1, 24, 19)) == [(org, "utility", "2027-01")]
    with engine.begin() as conn:
        add_statement(conn, org, lease, Decimal("63.40"), date(2027, 1, 1), date(2027, 1, 31))
    # Monday 2027-02-01 08:00 in Auckland is Sunday 2027-01-31 19:00 UTC: billed then, onto February.
    assert tick(engine, utc(2027, 1, 31, 18)) == []
    assert tick(engine, utc(2027, 1, 31, 19)) == [(org, "utility", "2027-02")]
    with engine.connect() as conn:
        assert conn.execute(
            sa.text("SELECT billing_period_start, total FROM invoices WHERE invoice_type = 'utility'")
        ).all() == [(date(2027, 2, 1), Decimal("63.40"))]


def test_schedule_changes_are_audited_and_a_change_without_them_keeps_them(engine):
    with engine.begin() as conn:
        org = add_organization(conn, "Audited Homes")
    schedule(engine, org, **NEW_YORK_RENT)
    with engine.begin() as conn:  # the page's hold switch names no schedule field
        set_billing_settings(conn, org, hold=True, reason="audit", updated_by="b")
        settings = billing_settings(conn, org)
        audit = settings_audit(conn, org)
    assert (settings.timezone, settings.rent_schedule_day, settings.rent_schedule_hour) == ("America/New_York", 20, 6)
    assert [
        (a.changed_by, a.old_timezone, a.new_timezone, a.old_rent_schedule_day, a.new_rent_schedule_day) for a in audit
    ] == [
        ("b", "America/New_York", "America/New_York", 20, 20),
        ("test", None, "America/New_York", None, 20),
    ]
    with engine.begin() as conn, pytest.raises(ValueError, match="rent_schedule_hour 24 is not valid"):
        set_billing_settings(conn, org, updated_by="c", rent_schedule_hour=24)
    with engine.connect() as conn:
        assert len(settings_audit(conn, org)) == 2
    with engine.connect() as conn:
        assert billing_settings(conn, org).schedule.describe(RunType.MONTHLY_RENT) == "day 20 at 06:00 America/New_York"


def test_an_unknown_time_zone_stored_by_another_service_skips_that_organization_only(engine, new_york, caplog):
    ny, plain, *_ = new_york
    schedule(engine, plain, rent_schedule_day=20, rent_schedule_hour=11)
    with engine.begin() as conn:  # written around the API, which refuses it
        conn.execute(
            sa.text(f"UPDATE {BILLING_SETTINGS_TABLE} SET timezone = 'Mars/Olympus' WHERE organization_id = :o"),
            {"o": plain},
        )
    with caplog.at_level(logging.ERROR, logger="tentman.runs.schedules"):
        assert tick(engine, JANUARY_DUE) == [(ny, "monthly_rent", "2027-02")]
    assert f"organization #{plain} has the unknown time zone 'Mars/Olympus'" in caplog.text
