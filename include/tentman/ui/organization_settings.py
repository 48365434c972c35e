"""The "Organizations" view's API: each organization's billing settings (its hold, proration method, time zone
and own schedules) with its next runs, their audit, and changing them.

Everyone who may read DAG runs may read the settings; who may change them is
tentman.ui.deps.can_edit_billing_settings. Every change is written with its audit row in one
transaction (tentman.billing.organization_settings); `updated_by` is the Airflow user name.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Depends, HTTPException, Path

from tentman.billing.organization_settings import (
    SCHEDULE_FIELDS,
    UnknownOrganization,
    billing_settings,
    change_billing_settings,
    settings_audit,
)
from tentman.db import UnitOfWork
from tentman.names import ProrationMethod, RunType
from tentman.ui import queries
from tentman.ui.deps import (
    json_body,
    read_only_connection,
    requires_billing_settings_editor,
    requires_reading_runs,
    tentman_db_engine,
)
from tentman.ui.models import (
    BIGINT_END,
    AuditEntry,
    BillingSettingsChange,
    OrganizationBillingSettings,
    SettingsChangeResult,
    error_responses,
)
from tentman.ui.schedule import default_crons, next_run, next_tick, schedule_of

router = APIRouter()


@router.get(
    "/api/organizations/billing-settings",
    response_model=list[OrganizationBillingSettings],
    dependencies=[requires_reading_runs],
    summary="Each organization's billing settings, its last rent and utility run and its next ones",
)
def list_billing_settings(conn=Depends(read_only_connection)) -> list[OrganizationBillingSettings]:
    now = datetime.now(UTC)
    # One default tick per run type for every organization on the default schedule.
    default_ticks = {run_type: next_tick(cron, now) for run_type, cron in default_crons().items()}
    organizations = []
    for row in queries.organizations_with_settings(conn):
        fields = dict(row._mapping)
        fields["effective_proration_method"] = ProrationMethod.parse(fields["proration_method"]).value
        schedule = schedule_of(row)
        for field, run_type in (("next_rent_run", RunType.MONTHLY_RENT), ("next_utility_run", RunType.UTILITY)):
            # An inactive organization is billed by no run; one with an unknown time zone has none to show.
            active = row.is_active and schedule is not None
            fields[field] = next_run(schedule, run_type, now, default_ticks[run_type]) if active else None
        organizations.append(OrganizationBillingSettings(**fields))
    return organizations


@router.put(
    "/api/organizations/{organization_id}/billing-settings",
    response_model=SettingsChangeResult,
    summary="Change an organization's billing settings (needs the right to change Airflow Variables)",
    responses=error_responses(404, 415, 422),
)
def put_billing_settings(
    organization_id: int = Path(ge=1, lt=BIGINT_END),
    user=Depends(requires_billing_settings_editor),
    body: BillingSettingsChange = json_body(BillingSettingsChange),
) -> SettingsChangeResult:
    with UnitOfWork(tentman_db_engine(), statement_timeout="15s") as uow:
        try:
            settings, changed = change_billing_settings(
                uow.connection,
                organization_id,
                billing_hold=body.billing_hold,
                hold_reason=body.hold_reason,
                proration_method=body.proration_method,
                updated_by=user.get_name(),
                # A schedule field the body leaves out keeps its stored value; one sent as null clears it.
                **{name: getattr(body, name) for name in SCHEDULE_FIELDS if name in body.model_fields_set},
            )
        except UnknownOrganization as exc:
            raise HTTPException(404, str(exc)) from exc
        except ValueError as exc:  # rolled back: nothing written
            raise HTTPException(422, str(exc)) from exc
        uow.commit()
    return SettingsChangeResult(**settings.to_dict(), changed=changed)


@router.get(
    "/api/organizations/{organization_id}/billing-settings/audit",
    response_model=list[AuditEntry],
    dependencies=[requires_reading_runs],
    summary="The organization's billing settings changes, newest first",
    responses=error_responses(404, 422),
)
def get_billing_settings_audit(
    organization_id: int = Path(ge=1, lt=BIGINT_END), conn=Depends(read_only_connection)
) -> list[AuditEntry]:
    try:
        billing_settings(conn, organization_id)
    except UnknownOrganization as exc:
        raise HTTPException(404, str(exc)) from exc
    return [AuditEntry(**dict(r._mapping)) for r in settings_audit(conn, organization_id)]
