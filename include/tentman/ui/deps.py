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

Airflow's modules are imported inside the functions that use them, on a request: the app is built
and its routes declared without importing Airflow (tests/ui/test_vendored_assets.py builds it in a
unit test), and the api-server that serves it has them loaded already.
"""

from __future__ import annotations

import functools

import sqlalchemy as sa
from fastapi import Depends, HTTPException, Request

from tentman.db import UnitOfWork
from tentman.names import RENT_DAG_ID


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
