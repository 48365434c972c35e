"""The "Organizations" view of the Billing runs page: each organization's billing settings, and changing them.

Who may change them: the deployment's administrators, i.e. a user whom Airflow's auth manager allows
to change Variables — `is_authorized_variable(method="PUT")`, the right to change the settings the
DAGs run with. A hold stops billing an organization's tenants and a method changes their amounts:
settings of the billing, not operation of one run, so triggering or pausing a DAG is not enough.
Roles that have it out of the box:

- SimpleAuthManager: OP and ADMIN (not USER, not VIEWER);
- FAB auth manager: Op and Admin (`can edit on Variables`, or a custom role with it); not User or Viewer.

Everyone who may read DAG runs may read the settings. Every change is written with its audit row
in one transaction (tentman.billing.organization_settings); `updated_by` is the Airflow user name.
"""

from __future__ import annotations

from datetime import date, datetime

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field, StrictBool

from tentman.billing.organization_settings import (
    UnknownOrganization,
    billing_settings,
    change_billing_settings,
    settings_audit,
)
from tentman.db import UnitOfWork
from tentman.names import BILLING_SETTINGS_TABLE, DEFAULT_PRORATION_METHOD, RENT_RUN, UTILITY_RUN, ProrationMethod
from tentman.ui.app import _engine, current_user, read_only, read_runs

METHODS = ", ".join(m.value for m in ProrationMethod)


def can_edit_billing_settings(user) -> bool:
    """Whether the auth manager lets `user` change Variables (see the module docstring)."""
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager().is_authorized_variable(method="PUT", user=user)


def requires_billing_settings_editor(user=Depends(current_user)):
    if not can_edit_billing_settings(user):
        raise HTTPException(
            403,
            "Forbidden: changing billing settings needs the right to change Airflow Variables (the Op or Admin role)",
        )
    return user


class LastRun(BaseModel):
    """The organization's latest `invoice_runs` row of one run type."""

    dag_run_id: str
    status: str
    billing_period_start: date
    billing_period_end: date
    proration_method: str | None
    started_at: datetime
    completed_at: datetime | None


class OrganizationBillingSettings(BaseModel):
    organization_id: int
    name: str | None
    is_active: bool | None
    billing_hold: bool
    hold_reason: str | None
    proration_method: str | None = Field(description="The organization's own method; null: the platform default")
    effective_proration_method: str = Field(description="What a rent run without its own method bills it with")
    updated_at: datetime | None = Field(description="null: never changed (the defaults)")
    updated_by: str | None
    last_rent_run: LastRun | None
    last_utility_run: LastRun | None


class BillingSettingsChange(BaseModel):
    """The organization's settings as they should be (all of them: a field left out takes its default)."""

    billing_hold: StrictBool = Field(description="true: runs for all organizations do not bill it")
    hold_reason: str | None = Field(None, description="Required (non-empty) with a hold; cleared without one")
    proration_method: str | None = Field(
        None, description=f"One of {METHODS}; null: the platform default ({DEFAULT_PRORATION_METHOD.value})"
    )


class SettingsChangeResult(BaseModel):
    organization_id: int
    billing_hold: bool
    hold_reason: str | None
    proration_method: str | None
    updated_at: datetime | None
    updated_by: str | None
    changed: bool = Field(description="false: the values were already these; nothing was written")


class AuditEntry(BaseModel):
    id: int
    organization_id: int
    changed_at: datetime
    changed_by: str
    old_billing_hold: bool
    new_billing_hold: bool
    old_hold_reason: str | None
    new_hold_reason: str | None
    old_proration_method: str | None
    new_proration_method: str | None


_LAST_RUN = """
    LEFT JOIN LATERAL (
        SELECT r.dag_run_id, r.status, r.billing_period_start, r.billing_period_end, r.proration_method,
               r.started_at, r.completed_at
        FROM invoice_runs r
        WHERE r.organization_id = o.id AND r.run_type = :{name}
        ORDER BY r.started_at DESC, r.id DESC LIMIT 1
    ) {name} ON true
"""


def organizations_with_settings(conn, limit: int = 5000) -> list[sa.Row]:
    return conn.execute(
        sa.text(
            f"""
            SELECT o.id AS organization_id, o.name, o.is_active,
                   coalesce(s.billing_hold, false) AS billing_hold, s.hold_reason, s.proration_method,
                   s.updated_at, s.updated_by,
                   to_jsonb(rent) AS last_rent_run, to_jsonb(utility) AS last_utility_run
            FROM organizations o
            LEFT JOIN {BILLING_SETTINGS_TABLE} s ON s.organization_id = o.id
            {_LAST_RUN.format(name="rent")}
            {_LAST_RUN.format(name="utility")}
            ORDER BY o.name, o.id
            LIMIT :limit
            """
        ),
        {"rent": RENT_RUN, "utility": UTILITY_RUN, "limit": limit},
    ).all()


router = APIRouter()


@router.get(
    "/api/organizations/billing-settings",
    response_model=list[OrganizationBillingSettings],
    dependencies=[read_runs],
    summary="Each organization's billing settings and its last rent and utility run",
)
def list_billing_settings(conn=Depends(read_only)) -> list[OrganizationBillingSettings]:
    items = []
    for row in organizations_with_settings(conn):
        data = dict(row._mapping)
        data["effective_proration_method"] = ProrationMethod.parse(data["proration_method"]).value
        items.append(OrganizationBillingSettings(**data))
    return items


@router.put(
    "/api/organizations/{organization_id}/billing-settings",
    response_model=SettingsChangeResult,
    summary="Change an organization's billing settings (needs the right to change Airflow Variables)",
    responses={403: {"description": "Not allowed"}, 404: {"description": "No such organization"}},
)
def put_billing_settings(
    organization_id: int, body: BillingSettingsChange, user=Depends(requires_billing_settings_editor)
) -> SettingsChangeResult:
    with UnitOfWork(_engine(), statement_timeout="15s") as uow:
        try:
            settings, changed = change_billing_settings(
                uow.connection,
                organization_id,
                billing_hold=body.billing_hold,
                hold_reason=body.hold_reason,
                proration_method=body.proration_method,
                updated_by=user.get_name(),
            )
        except UnknownOrganization as exc:
            raise HTTPException(404, str(exc)) from exc
        except ValueError as exc:  # rolled back: nothing written
            raise HTTPException(422, str(exc)) from exc
        uow.commit()
    data = settings.to_dict()
    return SettingsChangeResult(**data, changed=changed)


@router.get(
    "/api/organizations/{organization_id}/billing-settings/audit",
    response_model=list[AuditEntry],
    dependencies=[read_runs],
    summary="The organization's billing settings changes, newest first",
)
def get_billing_settings_audit(organization_id: int, conn=Depends(read_only)) -> list[AuditEntry]:
    try:
        billing_settings(conn, organization_id)
    except UnknownOrganization as exc:
        raise HTTPException(404, str(exc)) from exc
    return [AuditEntry(**dict(r._mapping)) for r in settings_audit(conn, organization_id)]
