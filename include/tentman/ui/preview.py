"""The preview of a rent run: the engine run on each organization, then rolled back (nothing written)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from tentman.billing.organization_settings import billing_settings
from tentman.billing.periods import BillingPeriod
from tentman.billing.preview import preview_rent
from tentman.db import UnitOfWork
from tentman.names import ProrationMethod
from tentman.ui import queries
from tentman.ui.deps import json_body, requires_triggering_rent, tentman_db_engine
from tentman.ui.models import Preview, PreviewRequest, error_responses

router = APIRouter()


@router.post(
    "/api/preview",
    response_model=Preview,
    dependencies=[requires_triggering_rent],
    summary="What a rent run would write, written nowhere",
    responses=error_responses(415, 422),
)
def preview(body: PreviewRequest = json_body(PreviewRequest)) -> dict:
    period = BillingPeriod.parse(body.billing_month)
    with UnitOfWork(tentman_db_engine(), read_only=True) as uow:
        known = set(queries.existing_organization_ids(uow.connection, body.organization_ids))
    unknown = sorted(set(body.organization_ids) - known)
    if unknown:
        raise HTTPException(422, f"organizations {unknown} do not exist")
    organizations = []
    for organization_id in body.organization_ids:
        with UnitOfWork(tentman_db_engine(), statement_timeout="60s") as uow:  # never committed: nothing is written
            method = body.proration_method or _own_proration_method(uow.connection, organization_id)
            organizations.append(
                preview_rent(
                    uow.connection,
                    organization_id=organization_id,
                    period=period,
                    proration_method=method,
                    limit=body.limit,
                    offset=body.offset,
                )
            )
    return {"organizations": organizations}


def _own_proration_method(conn, organization_id: int) -> ProrationMethod:
    return billing_settings(conn, organization_id).effective_proration_method
