"""The preview of a rent run: the engine run on each organization, then rolled back (nothing written),
within the preview's limits (tentman.billing.preview): a refusal is a 409, 429 or 503 saying why."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from tentman.billing.periods import BillingPeriod
from tentman.billing.preview import (
    MAX_CONCURRENT_PREVIEWS,
    OrganizationBusy,
    PreviewPreempted,
    PreviewRefused,
    PreviewsBusy,
    PreviewTimedOut,
    preview_rent_of_organizations,
)
from tentman.db import UnitOfWork
from tentman.ui import queries
from tentman.ui.deps import json_body, requires_triggering_rent, tentman_db_engine
from tentman.ui.models import Error, Preview, PreviewRequest, error_responses

router = APIRouter()

STATUS_OF_REFUSAL = {PreviewsBusy: 429, OrganizationBusy: 409, PreviewPreempted: 409, PreviewTimedOut: 503}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again", "schema": {"type": "integer"}}}


@router.post(
    "/api/preview",
    response_model=Preview,
    dependencies=[requires_triggering_rent],
    summary="What a rent run would write, written nowhere",
    responses={
        **error_responses(415, 422),
        409: {
            "model": Error,
            "description": "A billing run of one of the organizations is in progress, or started and took "
            "precedence over the preview",
            "headers": _RETRY_AFTER,
        },
        429: {
            "model": Error,
            "description": f"Previews are limited to {MAX_CONCURRENT_PREVIEWS} at a time, and that many are running",
            "headers": _RETRY_AFTER,
        },
        503: {"model": Error, "description": "The preview reached its time limit"},
    },
)
def preview(body: PreviewRequest = json_body(PreviewRequest)) -> dict:
    period = BillingPeriod.parse(body.billing_month)
    with UnitOfWork(tentman_db_engine(), read_only=True) as uow:
        known = set(queries.existing_organization_ids(uow.connection, body.organization_ids))
    unknown = sorted(set(body.organization_ids) - known)
    if unknown:
        raise HTTPException(422, f"organizations {unknown} do not exist")
    try:
        organizations = preview_rent_of_organizations(
            tentman_db_engine(),
            body.organization_ids,
            period=period,
            proration_method=body.proration_method,
            limit=body.limit,
            offset=body.offset,
        )
    except PreviewRefused as refusal:
        retry_after = refusal.retry_after_seconds
        raise HTTPException(
            STATUS_OF_REFUSAL[type(refusal)],
            str(refusal),
            headers=None if retry_after is None else {"Retry-After": str(retry_after)},
        ) from None
    return {"organizations": organizations}
