"""TentMan's database as the application makes it: other DDL than ours, and the `tentman` command on it."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit

import sqlalchemy as sa

from support.factories import add_charge, add_lease, add_statement

TENTMAN = str(Path(sys.executable).with_name("tentman"))

# TentMan's tables as an application's own migrations could have made them: other constraint and
# index names, `integer`/serial ids here and there, varchar text, extra columns (one NOT NULL with a
# default on a table billing inserts into), extra tables with foreign keys into the billed tables,
# CHECKs of its own, and its own rows in all of it.
APPLICATION_DDL = """
CREATE TABLE organizations (
    id         serial PRIMARY KEY,
    name       varchar(200) NOT NULL,
    currency   char(3) NOT NULL DEFAULT 'USD',
    is_active  boolean NOT NULL DEFAULT true,
    slug       text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE leases (
    id              bigserial PRIMARY KEY,
    organization_id integer NOT NULL REFERENCES organizations (id),
    unit_label      varchar(40),
    tenant_name     text,
    start_date      date,
    end_date        date,
    monthly_rent    numeric(14, 2),
    status          varchar(20) CHECK (status IN ('draft', 'active', 'terminated', 'ended')),
    deposit         numeric(14, 2) DEFAULT 0
);
CREATE INDEX ix_leases_org ON leases (organization_id, status, start_date);
CREATE TABLE lease_recurring_charges (
    id          serial PRIMARY KEY,
    lease_id    bigint REFERENCES leases (id) ON DELETE CASCADE,
    charge_type text,
    description text,
    amount      numeric(12, 2),
    start_date  date,
    end_date    date,
    is_active   boolean DEFAULT true,
    gl_account  text
);
CREATE INDEX ix_charges_lease ON lease_recurring_charges (lease_id);
CREATE TABLE invoice_runs (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id      integer NOT NULL REFERENCES organizations (id),
    run_type             text NOT NULL CHECK (run_type IN ('monthly_rent', 'utility', 'late_fees')),
    billing_period_start date NOT NULL,
    billing_period_end   date NOT NULL,
    proration_method     text,
    status               text NOT NULL CHECK (status IN
        ('running', 'completed', 'completed_with_errors', 'failed', 'on_hold', 'cancelled')),
    total_leases         integer NOT NULL DEFAULT 0,
    success_count        integer NOT NULL DEFAULT 0,
    skipped_count        integer NOT NULL DEFAULT 0,
    failure_count        integer NOT NULL DEFAULT 0,
    errors               jsonb NOT NULL DEFAULT '[]',
    dag_id               text NOT NULL,
    dag_run_id           text NOT NULL,
    started_at           timestamptz NOT NULL DEFAULT now(),
    completed_at         timestamptz,
    triggered_by         text
);
CREATE UNIQUE INDEX ux_runs_dag_run_org ON invoice_runs (organization_id, dag_id, dag_run_id);
CREATE INDEX ix_runs_org_period ON invoice_runs (organization_id, billing_period_start, run_type);
CREATE INDEX ix_runs_started ON invoice_runs (started_at DESC);
CREATE INDEX ix_runs_period ON invoice_runs (billing_period_start, run_type);
CREATE TABLE invoices (
    id                   bigserial PRIMARY KEY,
    organization_id      integer NOT NULL REFERENCES organizations (id),
    lease_id             bigint NOT NULL REFERENCES leases (id),
    invoice_type         varchar(20) NOT NULL,
    billing_period_start date NOT NULL,
    billing_period_end   date NOT NULL,
    status               varchar(20) NOT NULL DEFAULT 'draft',
    currency             char(3) NOT NULL,
    subtotal             numeric(14, 2) NOT NULL,
    total                numeric(14, 2) NOT NULL,
    due_date             date NOT NULL,
    invoice_run_id       bigint REFERENCES invoice_runs (id) ON DELETE SET NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    invoice_number       text,
    sent_at              timestamptz,
    origin               text NOT NULL DEFAULT 'billing',
    CONSTRAINT uq_invoice_lease_type_period UNIQUE (invoice_type, lease_id, billing_period_start),
    CONSTRAINT ck_invoice_total CHECK (total >= 0)
);
CREATE INDEX ix_invoices_org ON invoices (organization_id, invoice_type, billing_period_start) INCLUDE (total, status);
CREATE INDEX ix_invoices_period ON invoices (billing_period_start, invoice_type);
CREATE INDEX ix_invoices_run ON invoices (invoice_run_id);
CREATE TABLE invoice_lines (
    id                   bigserial PRIMARY KEY,
    invoice_id           bigint NOT NULL REFERENCES invoices (id) ON DELETE CASCADE,
    line_type            varchar(30) NOT NULL,
    source_id            bigint NOT NULL,
    description          text NOT NULL,
    service_period_start date,
    service_period_end   date,
    amount               numeric(14, 2) NOT NULL,
    tax_code             text,
    CONSTRAINT uq_line_source UNIQUE (invoice_id, line_type, source_id)
);
CREATE UNIQUE INDEX ux_line_statement ON invoice_lines (source_id) WHERE line_type::text = 'utility';
CREATE TABLE utility_statements (
    id              bigserial PRIMARY KEY,
    organization_id integer REFERENCES organizations (id),
    lease_id        bigint REFERENCES leases (id),
    utility_type    text,
    period_start    date,
    period_end      date,
    amount          numeric(12, 2),
    status          text,
    finalized_at    timestamptz,
    invoice_line_id bigint REFERENCES invoice_lines (id) ON DELETE SET NULL,
    meter_reading   numeric
);
CREATE INDEX ix_statements_pending ON utility_statements (organization_id, period_end)
    WHERE invoice_line_id IS NULL AND status = 'finalized';
CREATE INDEX ix_statements_line ON utility_statements (invoice_line_id);
-- The application's own tables, two of them pointing into the billed ones.
CREATE TABLE payments (
    id         bigserial PRIMARY KEY,
    invoice_id bigint NOT NULL REFERENCES invoices (id),
    amount     numeric(14, 2) NOT NULL CHECK (amount > 0),
    paid_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE tenant_notes (id serial PRIMARY KEY, lease_id bigint REFERENCES leases (id), note text);
"""


def application_database(engine) -> None:
    """TentMan's tables as APPLICATION_DDL makes them, with rows in every table, the extra ones too."""
    with engine.begin() as conn:
        conn.exec_driver_sql(APPLICATION_DDL)
        org = conn.execute(
            sa.text("INSERT INTO organizations (name, slug) VALUES ('Harbor View', 'harbor-view') RETURNING id")
        ).scalar_one()
        lease = add_lease(conn, org, date(2025, 1, 1), None, "1450.00")
        add_charge(conn, lease, "60.00", date(2025, 1, 1))
        add_statement(conn, org, lease, "41.17")
        run = conn.execute(
            sa.text(
                "INSERT INTO invoice_runs (organization_id, run_type, billing_period_start, billing_period_end, "
                "status, dag_id, dag_run_id, triggered_by) "
                "VALUES (:o, 'late_fees', '2026-11-01', '2026-11-30', 'completed', 'late_fees', 'r1', 'app') "
                "RETURNING id"
            ),
            {"o": org},
        ).scalar_one()
        invoice = conn.execute(
            sa.text(
                "INSERT INTO invoices (organization_id, lease_id, invoice_type, billing_period_start, "
                "billing_period_end, status, currency, subtotal, total, due_date, invoice_run_id, invoice_number, "
                "origin) VALUES (:o, :l, 'late_fee', '2026-11-01', '2026-11-30', 'issued', 'USD', 25, 25, "
                "'2026-11-30', :r, 'INV-0001', 'application') RETURNING id"
            ),
            {"o": org, "l": lease, "r": run},
        ).scalar_one()
        conn.execute(
            sa.text(
                "INSERT INTO invoice_lines (invoice_id, line_type, source_id, description, amount, tax_code) "
                "VALUES (:i, 'late_fee', 1, 'Late fee', 25, 'LF')"
            ),
            {"i": invoice},
        )
        conn.execute(sa.text("INSERT INTO payments (invoice_id, amount) VALUES (:i, 25)"), {"i": invoice})
        conn.execute(sa.text("INSERT INTO tenant_notes (lease_id, note) VALUES (:l, 'pays early')"), {"l": lease})


def tentman(*args: str, uri: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    env["AIRFLOW_CONN_TENTMAN_DB"] = uri
    return subprocess.run([TENTMAN, *args], capture_output=True, text=True, env=env, timeout=120)


def with_user(uri: str, user: str) -> str:
    """The same database URI, logging in as `user` (no password: the test servers trust local logins)."""
    parts = urlsplit(uri)
    return parts._replace(netloc=f"{user}@{parts.netloc.rpartition('@')[2]}").geturl()
