"""What the page's routes depend on: the TentMan database, the Airflow user, and what that user may do.

Permissions are Airflow's own, asked of its auth manager:

- reading runs (and the billing settings, the page, the API docs): read access to DAG runs;
- the preview: the right to trigger the rent DAG (it runs the engine, then rolls back);
- changing an organization's billing settings: the right to change Variables,
  `is_authorized_variable(method="PUT")`, the right to change the settings the DAGs run with. A
  hold stops billing an organization's tenants and a method changes their amounts: settings of the
  billing, not operation of one run, so triggering or pausing a DAG is not enough. Roles that have
  it out of the box: SimpleAuthManager's OP and ADMIN (not USER, not VIEWER); the FAB auth
  manager's Op and Admin (`can edit on Variables`, or a custom role with it), not User or Viewer.

Before any of that, a request that changes something (any method but GET, HEAD, OPTIONS) must come
from this Airflow's own pages, not from another site a signed-in user visits (cross-site request
forgery): `refuse_cross_site_changes`, a dependency of the whole app.

Airflow's modules are imported inside the functions that use them, on a request: the app is built
and its routes declared without importing Airflow (tests/ui/test_vendored_assets.py builds it in a
unit test), and the api-server that serves it has them loaded already.
"""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from tentman.db import UnitOfWork
from tentman.names import RENT_DAG_ID

# What the page's JavaScript sends with every request that changes something, and what every API client
# sends too. A browser sends a custom header to another origin only after a CORS preflight, which
# Airflow's api-server refuses (it allows no other origin); an HTML form or a link cannot send one.
CSRF_HEADER = "X-Requested-By"
CSRF_HEADER_VALUE = "tentman-billing"
# Methods that change nothing here: the only ones another site may make a signed-in browser send.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def refuse_cross_site_changes(request: Request) -> None:
    """A dependency of every route: a request that changes something is refused (403, saying why) when the
    browser says it comes from another site (`Sec-Fetch-Site`), when its `Origin` is not this Airflow's,
    or when it lacks the `X-Requested-By: tentman-billing` header.

    The header is required of every client, bearer-token ones too: one rule, and no guess about which
    credential the request carries (a gateway that turns its own session cookie into an `Authorization`
    header would make a bearer request as forgeable as a cookie one)."""
    if request.method in SAFE_METHODS:
        return
    site = request.headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        raise HTTPException(
            403,
            f"Refused: the browser says this request comes from another site (Sec-Fetch-Site: {site}); "
            "billing settings and previews change only from this Airflow's own pages or an API client",
        )
    origin = request.headers.get("origin")
    if origin is not None and _normalized_origin(origin) not in _own_origins(request):
        raise HTTPException(
            403,
            f"Refused: the request comes from the origin {origin!r}, not from this Airflow "
            f"({', '.join(sorted(_own_origins(request)))}); billing settings and previews change only from its "
            "own pages or an API client",
        )
    sent = request.headers.get(CSRF_HEADER)
    if sent != CSRF_HEADER_VALUE:
        raise HTTPException(
            403,
            f"Refused: a request that changes something needs the header '{CSRF_HEADER}: {CSRF_HEADER_VALUE}' "
            f"({'this one has none' if sent is None else f'not {sent!r}'}); the page sends it, API clients add "
            "it, and no other site can make a browser send it",
        )


def _own_origins(request: Request) -> set[str]:
    """This api-server's origins: the one the request was addressed to and Airflow's `[api] base_url`
    (behind a proxy the browser's origin is the latter), as Airflow's own redirect check takes them."""
    from airflow.configuration import conf

    origins = {_normalized_origin(str(request.base_url))}
    if base_url := conf.get("api", "base_url", fallback=None):
        origins.add(_normalized_origin(base_url))
    return origins


def _normalized_origin(url: str) -> str:
    """scheme://host[:port] in lower case, without the scheme's default port (as browsers send `Origin`)."""
    parts = urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError:  # a port that is not a number: no origin of ours
        return url
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    host = (parts.hostname or "").lower()
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"{parts.scheme.lower()}://{host}" + (f":{port}" if port is not None and port != default else "")


def json_body(model: type[BaseModel]) -> Any:
    """A dependency: the request's JSON body as `model`, read after the route's other dependencies.

    FastAPI reads a body it declares before any dependency runs: a body that is not JSON would answer
    400 or 422 to anyone, and a large one would be parsed for anyone, before the cross-site check and
    the user's permissions. Declared after them, this one is read only for a request they let through.
    The body's schema is in the OpenAPI document all the same (tentman.ui.app.openapi_document)."""

    async def read_json_body(request: Request) -> BaseModel:
        content_type = request.headers.get("content-type")
        if content_type is not None:
            media_type = content_type.split(";", 1)[0].strip().lower()
            if media_type != "application/json" and not (
                media_type.startswith("application/") and media_type.endswith("+json")
            ):
                raise HTTPException(415, f"Content-Type {content_type!r} is not accepted; expected application/json")
        try:
            return model.model_validate_json(await request.body())
        except ValidationError as exc:
            # As FastAPI words a body it reads itself: each error located in the body; a body that is not JSON
            # (its bytes as the input) shown as text, undecodable bytes replaced.
            raise RequestValidationError(
                [
                    {
                        **error,
                        "loc": ("body", *error["loc"]),
                        "input": error["input"].decode(errors="replace")
                        if isinstance(error["input"], bytes)
                        else error["input"],
                    }
                    for error in exc.errors(include_url=False)
                ]
            ) from exc

    read_json_body.body_model = model
    return Depends(read_json_body)


@functools.cache
def tentman_db_engine() -> sa.Engine:
    """The engine of the `tentman_db` Airflow connection, built once per api-server process."""
    from tentman.orchestration.connection import airflow_tentman_engine

    return airflow_tentman_engine()


def read_only_connection():
    """A connection in a READ ONLY transaction with a statement timeout (never committed)."""
    with UnitOfWork(tentman_db_engine(), read_only=True, statement_timeout="15s") as uow:
        yield uow.connection


async def current_user(request: Request):
    """The Airflow user of the request: bearer token first, else the UI's session cookie."""
    from airflow.api_fastapi.core_api.security import resolve_user_from_token

    authorization = request.headers.get("authorization", "")
    token = authorization[7:] if authorization.lower().startswith("bearer ") else request.cookies.get("_token")
    return await resolve_user_from_token(token)  # 401 without credentials, 403 for a bad token


def requires_dag_run_access(method: str, dag_id: str | None = None):
    """A dependency: the user must be allowed `method` on DAG runs (of `dag_id`, or of every DAG)."""

    def check_dag_run_access(user=Depends(current_user)):
        from airflow.api_fastapi.app import get_auth_manager
        from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

        if not get_auth_manager().is_authorized_dag(
            method=method, access_entity=DagAccessEntity.RUN, details=DagDetails(id=dag_id), user=user
        ):
            raise HTTPException(403, "Forbidden: your Airflow role does not allow this")
        return user

    return Depends(check_dag_run_access)


requires_reading_runs = requires_dag_run_access("GET")
requires_triggering_rent = requires_dag_run_access("POST", RENT_DAG_ID)


def can_edit_billing_settings(user) -> bool:
    """Whether the auth manager lets `user` change Variables (see the module docstring)."""
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager().is_authorized_variable(method="PUT", user=user)


def requires_billing_settings_editor(user=Depends(current_user)):
    """A dependency: the user may change billing settings; returns that user (their name is audited)."""
    if not can_edit_billing_settings(user):
        raise HTTPException(
            403,
            "Forbidden: changing billing settings needs the right to change Airflow Variables (the Op or Admin role)",
        )
    return user
