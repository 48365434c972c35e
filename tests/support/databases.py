"""Databases for tests: each test gets its own, uniquely named, on the test server."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from tentman.db import create_engine_from_uri


def _admin_engine(admin_uri: str) -> sa.Engine:
    return create_engine_from_uri(admin_uri, isolation_level="AUTOCOMMIT")


def create_database(admin_uri: str, prefix: str, template: str | None = None) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    engine = _admin_engine(admin_uri)
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    engine.dispose()
    return name


def drop_database(admin_uri: str, name: str) -> None:
    engine = _admin_engine(admin_uri)
    with engine.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    engine.dispose()
