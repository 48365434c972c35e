"""Per-organization billing settings: defaults, changes with their audit row, refusals, and the schema's own checks."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from support.factories import add_organization
from tentman.billing.organization_settings import (
    BillingSettings,
    UnknownOrganization,
    billing_settings,
    change_billing_settings,
    settings_audit,
)
from tentman.names import BILLING_SETTINGS_AUDIT_TABLE, BILLING_SETTINGS_TABLE, ProrationMethod


def counts(conn) -> tuple[int, int]:
    return conn.execute(
        sa.text(
            f"SELECT (SELECT count(*) FROM {BILLING_SETTINGS_TABLE}), "
            f"(SELECT count(*) FROM {BILLING_SETTINGS_AUDIT_TABLE})"
        )
    ).one()


def test_an_organization_without_a_row_has_the_defaults(engine):
    with engine.begin() as conn:
        org = add_organization(conn, "Harbor View")
        settings = billing_settings(conn, org)
    assert settings == BillingSettings(org, billing_hold=False, hold_reason=None, proration_method=None)
    assert settings.effective_proration_method is ProrationMethod.ACTUAL_DAYS_IN_MONTH


def test_each_change_is_stored_with_its_audit_row(engine):
    with engine.begin() as conn:
        org = add_organization(conn, "Harbor View")
    with engine.begin() as conn:
        settings, changed = change_billing_settings(
            conn,
            org,
            billing_hold=True,
            hold_reason="  migration from Yardi until March  ",
            proration_method="ThirtyDayMonth",
            updated_by="admin",
        )
    assert changed
    assert (settings.billing_hold, settings.hold_reason, settings.proration_method, settings.updated_by) == (
        True,
        "migration from Yardi until March",
        "ThirtyDayMonth",
        "admin",
    )
    assert settings.updated_at is not None
    assert settings.effective_proration_method is ProrationMethod.THIRTY_DAY_MONTH
    # Clearing the hold clears its reason; the audit keeps it.
    with engine.begin() as conn:
        cleared, _ = change_billing_settings(
            conn, org, billing_hold=False, hold_reason="ignored", proration_method=None, updated_by="ops"
        )
    assert (cleared.billing_hold, cleared.hold_reason, cleared.proration_method) == (False, None, None)
    # The same values again: nothing written, not even updated_at.
    with engine.begin() as conn:
        again, changed = change_billing_settings(
            conn, org, billing_hold=False, hold_reason=None, proration_method=None, updated_by="someone"
        )
    assert not changed and again == cleared
    with engine.connect() as conn:
        audit = settings_audit(conn, org)
        assert counts(conn) == (1, 2)
    assert [
        (
            a.changed_by,
            a.old_billing_hold,
            a.new_billing_hold,
            a.old_hold_reason,
            a.new_hold_reason,
            a.old_proration_method,
            a.new_proration_method,
        )
        for a in audit
    ] == [
        ("ops", True, False, "migration from Yardi until March", None, "ThirtyDayMonth", None),
        ("admin", False, True, None, "migration from Yardi until March", None, "ThirtyDayMonth"),
    ]
    assert all(a.organization_id == org and a.changed_at is not None for a in audit)


@pytest.mark.parametrize(
    "values, message",
    [
        (
            {"billing_hold": False, "hold_reason": None, "proration_method": "Daily"},
            "proration_method 'Daily' is not supported; expected one of ActualDaysInMonth, ThirtyDayMonth, "
            "Annual365, NoProration, or null for the platform default (ActualDaysInMonth)",
        ),
        (
            {"billing_hold": False, "hold_reason": None, "proration_method": "thirtydaymonth"},
            "proration_method 'thirtydaymonth' is not supported",
        ),
        (
            {"billing_hold": True, "hold_reason": "", "proration_method": None},
            "hold_reason '' is empty; a billing hold needs a reason",
        ),
        (
            {"billing_hold": True, "hold_reason": "   ", "proration_method": None},
            "hold_reason '   ' is empty; a billing hold needs a reason",
        ),
        (
            {"billing_hold": True, "hold_reason": None, "proration_method": None},
            "hold_reason None is empty; a billing hold needs a reason",
        ),
        (
            {"billing_hold": "yes", "hold_reason": "x", "proration_method": None},
            "billing_hold 'yes' is not valid; expected true or false",
        ),
        (
            {"billing_hold": True, "hold_reason": "x" * 501, "proration_method": None},
            "hold_reason is 501 characters long; expected at most 500",
        ),
        # PostgreSQL refuses a NUL in text: the insert failed and the API answered 500.
        (
            {"billing_hold": True, "hold_reason": "dispute\x00", "proration_method": None},
            "hold_reason 'dispute\\x00' contains a NUL character (\\x00); expected text without it",
        ),
    ],
)
def test_bad_values_are_refused_naming_them_and_nothing_is_written(engine, values, message):
    with engine.begin() as conn:
        org = add_organization(conn, "Harbor View")
    with engine.begin() as conn, pytest.raises(ValueError) as err:
        change_billing_settings(conn, org, **values, updated_by="admin")
    assert message in str(err.value)
    with engine.connect() as conn:
        assert counts(conn) == (0, 0)


def test_an_unknown_organization_is_refused_naming_it(engine):
    with engine.begin() as conn, pytest.raises(UnknownOrganization) as err:
        change_billing_settings(
            conn, 424242, billing_hold=True, hold_reason="dispute", proration_method=None, updated_by="admin"
        )
    assert str(err.value) == "organization 424242 does not exist; expected the id of an organization"
    assert isinstance(err.value, ValueError)
    with engine.connect() as conn:
        assert counts(conn) == (0, 0)


def test_the_schema_refuses_what_the_functions_refuse(engine):
    """Other services write the table directly: the database keeps the same rules."""
    with engine.begin() as conn:
        org = add_organization(conn, "Harbor View")
    insert = sa.text(
        f"INSERT INTO {BILLING_SETTINGS_TABLE} (organization_id, billing_hold, hold_reason, proration_method) "
        "VALUES (:org, :hold, :reason, :method)"
    )
    for hold, reason, method, constraint in [
        (False, None, "Daily", "organization_billing_settings_proration_method_check"),
        (True, None, None, "organization_billing_settings_hold_has_reason"),
        (True, "  ", None, "organization_billing_settings_hold_has_reason"),
    ]:
        with engine.begin() as conn, pytest.raises(sa.exc.IntegrityError, match=constraint):
            conn.execute(insert, {"org": org, "hold": hold, "reason": reason, "method": method})
    for method in ProrationMethod:
        with engine.begin() as conn:
            conn.execute(insert, {"org": org, "hold": False, "reason": None, "method": method.value})
            conn.execute(sa.text(f"DELETE FROM {BILLING_SETTINGS_TABLE}"))
