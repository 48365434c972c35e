"""The TentMan application's tables: what billing relies on in them (the contract), and how it checks it.

The application owns `organizations`, `leases`, `lease_recurring_charges`, `utility_statements`,
`invoices`, `invoice_lines` and `invoice_runs`, and evolves them with its own migrations. The bundle
never creates, alters or drops them in a database it adopts: it states here, once, which columns,
types, keys and indexes it needs, and `contract_report` compares a database with that statement.
Only a standalone database (the demo, the tests, compose) gets the tables from this module
(`create_application_tables`, `tentman db upgrade --with-application-tables`).

The tables are found on the connection's search_path, as every billing query finds them.

What a difference means:
- an error: billing would be wrong or fail (a missing table or column, a type it cannot use, a
  column it writes NULL into that refuses NULL, a column it leaves to its default that has none, a
  column the application added as NOT NULL without a default to a table billing inserts into, a
  missing unique key that makes billing idempotent, the cascade that removes a stale draft's lines,
  a CHECK that refuses a value billing writes);
- a warning: billing is right but slow (a missing index), and runs.

docs/schema.md says the same for people; tests/test_schema.py checks databases against the contract, and
tests/test_names.py holds the CHECK lists below to the vocabulary of tentman.names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tentman.names import InvoiceStatus, InvoiceType, LineType, RunStatus, RunType, StatementStatus

# Types, as PostgreSQL's format_type() names them without their modifiers, that billing can use.
ID = ("bigint", "integer")
TEXT = ("text", "character varying", "character")
MONEY = ("numeric",)
DATE = ("date",)
FLAG = ("boolean",)
MOMENT = ("timestamp with time zone",)
COUNT = ("integer", "bigint")
JSON = ("jsonb",)


@dataclass(frozen=True)
class Column:
    name: str
    types: tuple[str, ...]
    # Billing writes NULL into it: it must accept NULL.
    written_null: bool = False
    # Billing inserts rows without it: it must have a default (or be an identity column).
    defaulted: bool = False
    # The values billing writes into it: a CHECK of the application's must accept each.
    written_values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    # Billing inserts rows: a NOT NULL column billing does not know, without a default, breaks it.
    billing_inserts: bool = False


@dataclass(frozen=True)
class UniqueKey:
    """A unique constraint or index that billing's ON CONFLICT relies on (any name will do)."""

    name: str
    table: str
    columns: tuple[str, ...]
    where: str | None = None

    def ddl(self) -> str:
        if self.where:
            return f"CREATE UNIQUE INDEX {self.name} ON {self.table} ({', '.join(self.columns)}) WHERE {self.where};"
        return f"ALTER TABLE {self.table} ADD CONSTRAINT {self.name} UNIQUE ({', '.join(self.columns)});"


@dataclass(frozen=True)
class ForeignKey:
    """A foreign key whose ON DELETE action billing relies on."""

    table: str
    column: str
    references: str
    on_delete: str  # as pg_get_constraintdef() writes it: CASCADE, SET NULL

    def ddl(self) -> str:
        return (
            f"ALTER TABLE {self.table} ADD FOREIGN KEY ({self.column}) REFERENCES {self.references} (id) "
            f"ON DELETE {self.on_delete};"
        )


@dataclass(frozen=True)
class Index:
    """An index that only speed relies on: any index whose leading columns are these will do."""

    name: str
    table: str
    columns: tuple[str, ...]
    include: tuple[str, ...] = ()
    where: str | None = None
    why: str = ""

    def ddl(self) -> str:
        include = f" INCLUDE ({', '.join(self.include)})" if self.include else ""
        where = f" WHERE {self.where}" if self.where else ""
        return f"CREATE INDEX CONCURRENTLY {self.name} ON {self.table} ({', '.join(self.columns)}){include}{where};"


# The invoice statuses billing writes (the values of the CHECK-constrained columns are names' enums).
INVOICE_STATUSES_WRITTEN = (InvoiceStatus.DRAFT,)

# The largest amount billing writes into an invoice or a line: what numeric(12, 2), their money
# columns' type in APPLICATION_TABLES_DDL below, holds.
MAX_AMOUNT = Decimal("9999999999.99")

TABLES = (
    Table(
        "organizations",
        (
            Column("id", ID),
            Column("name", TEXT),
            Column("currency", TEXT),
            Column("is_active", FLAG),
        ),
    ),
    Table(
        "leases",
        (
            Column("id", ID),
            Column("organization_id", ID),
            Column("unit_label", TEXT),
            Column("tenant_name", TEXT),
            Column("start_date", DATE),
            Column("end_date", DATE),
            Column("monthly_rent", MONEY),
            Column("status", TEXT),
        ),
    ),
    Table(
        "lease_recurring_charges",
        (
            Column("id", ID),
            Column("lease_id", ID),
            Column("charge_type", TEXT),
            Column("description", TEXT),
            Column("amount", MONEY),
            Column("start_date", DATE),
            Column("end_date", DATE),
            Column("is_active", FLAG),
        ),
    ),
    Table(
        "utility_statements",
        (
            Column("id", ID),
            Column("organization_id", ID),
            Column("lease_id", ID),
            Column("utility_type", TEXT),
            Column("period_start", DATE),
            Column("period_end", DATE),
            Column("amount", MONEY),
            Column("status", TEXT),
            Column("finalized_at", MOMENT),
            # The one column of the application's statements that billing writes: the line that billed it.
            Column("invoice_line_id", ID, written_null=True),
        ),
    ),
    Table(
        "invoice_runs",
        (
            Column("id", ID, defaulted=True),
            Column("organization_id", ID),
            Column("run_type", TEXT, written_values=tuple(RunType)),
            Column("billing_period_start", DATE),
            Column("billing_period_end", DATE),
            Column("proration_method", TEXT, written_null=True),
            Column("status", TEXT, written_values=tuple(RunStatus)),
            Column("total_leases", COUNT, defaulted=True),
            Column("success_count", COUNT, defaulted=True),
            Column("skipped_count", COUNT, defaulted=True),
            Column("failure_count", COUNT, defaulted=True),
            Column("errors", JSON),
            Column("dag_id", TEXT),
            Column("dag_run_id", TEXT),
            Column("started_at", MOMENT),
            Column("completed_at", MOMENT, written_null=True),
        ),
        billing_inserts=True,
    ),
    Table(
        "invoices",
        (
            Column("id", ID, defaulted=True),
            Column("organization_id", ID),
            Column("lease_id", ID),
            Column("invoice_type", TEXT, written_values=tuple(InvoiceType)),
            Column("billing_period_start", DATE),
            Column("billing_period_end", DATE),
            Column("status", TEXT, written_values=INVOICE_STATUSES_WRITTEN),
            Column("currency", TEXT),
            Column("subtotal", MONEY),
            Column("total", MONEY),
            Column("due_date", DATE),
            Column("invoice_run_id", ID, written_null=True),
            Column("created_at", MOMENT, defaulted=True),
            Column("updated_at", MOMENT, defaulted=True),
        ),
        billing_inserts=True,
    ),
    Table(
        "invoice_lines",
        (
            Column("id", ID, defaulted=True),
            Column("invoice_id", ID),
            Column("line_type", TEXT, written_values=tuple(LineType)),
            Column("source_id", ID),
            Column("description", TEXT),
            Column("service_period_start", DATE, written_null=True),
            Column("service_period_end", DATE, written_null=True),
            Column("amount", MONEY),
        ),
        billing_inserts=True,
    ),
)
TABLE_NAMES = tuple(t.name for t in TABLES)

UNIQUE_KEYS = (
    # One invoice per lease, type and period, whoever writes it: the idempotency key.
    UniqueKey("invoices_one_per_lease_type_period", "invoices", ("lease_id", "invoice_type", "billing_period_start")),
    # A statement is billed at most once across all invoices.
    UniqueKey(
        "invoice_lines_utility_statement_once",
        "invoice_lines",
        ("source_id",),
        where=f"line_type = '{LineType.UTILITY}'",
    ),
    # A rent draft's lines are reconciled line by line.
    UniqueKey("invoice_lines_one_per_source", "invoice_lines", ("invoice_id", "line_type", "source_id")),
    # One row per organization per DAG run: a cleared and re-run task updates its row.
    UniqueKey("invoice_runs_one_per_org_and_dag_run", "invoice_runs", ("dag_id", "dag_run_id", "organization_id")),
)

FOREIGN_KEYS = (
    # A stale rent draft is deleted with its lines.
    ForeignKey("invoice_lines", "invoice_id", "invoices", "CASCADE"),
)

INDEXES = (
    Index(
        "leases_organization_status_idx",
        "leases",
        ("organization_id", "status"),
        why="an organization's leases, read by every rent run",
    ),
    Index("lease_recurring_charges_lease_idx", "lease_recurring_charges", ("lease_id",), why="the charges of a lease"),
    Index(
        "utility_statements_pending_idx",
        "utility_statements",
        ("organization_id", "period_end"),
        where=f"invoice_line_id IS NULL AND status = '{StatementStatus.FINALIZED}'",
        why="an organization's pending statements, without scanning billed history",
    ),
    Index(
        "utility_statements_invoice_line_idx",
        "utility_statements",
        ("invoice_line_id",),
        why="the statement of a line (a deleted draft's lines set their statements pending)",
    ),
    Index(
        "invoices_org_type_period_idx",
        "invoices",
        ("organization_id", "invoice_type", "billing_period_start"),
        include=("total", "status"),
        why="an organization's invoices of a period; the page's totals from the index alone",
    ),
    Index(
        "invoices_period_type_idx",
        "invoices",
        ("billing_period_start", "invoice_type"),
        include=("total", "status"),
        why="the page's monthly trends",
    ),
    Index("invoices_invoice_run_idx", "invoices", ("invoice_run_id",), why="the invoices of a run"),
    Index(
        "invoice_runs_org_period_idx",
        "invoice_runs",
        ("organization_id", "billing_period_start", "run_type"),
        why="an organization's runs of a period",
    ),
    Index("invoice_runs_started_idx", "invoice_runs", ("started_at",), why="the page's runs list, newest first"),
    Index(
        "invoice_runs_period_idx",
        "invoice_runs",
        ("billing_period_start", "run_type"),
        why="the page's month filter and failure-rate trend",
    ),
)


@dataclass
class ContractReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        return not self.errors


def contract_report(conn: Connection) -> ContractReport:
    """Compare the application's tables on this connection's search_path with the contract."""
    report = ContractReport()
    catalog = _Catalog(conn)
    for table in TABLES:
        if table.name not in catalog.oids:
            report.errors.append(f"missing table {table.name}: {_MISSING_TABLE_FIX}")
            continue
        _check_columns(table, catalog, report)
    for key in UNIQUE_KEYS:
        if key.table in catalog.oids and not catalog.has_unique(key):
            columns = ", ".join(key.columns)
            report.errors.append(f"missing unique key {key.name} on {key.table} ({columns}): {key.ddl()}")
    for fk in FOREIGN_KEYS:
        if fk.table in catalog.oids and not catalog.has_foreign_key(fk):
            report.errors.append(
                f"missing foreign key {fk.table}.{fk.column} -> {fk.references} ON DELETE {fk.on_delete} "
                f"(billing deletes stale drafts and relies on their lines going with them): {fk.ddl()}"
            )
    for index in INDEXES:
        if index.table in catalog.oids and not catalog.has_index(index):
            report.warnings.append(
                f"missing index {index.name} on {index.table} ({', '.join(index.columns)}), {index.why}: {index.ddl()}"
            )
    return report


def format_report(report: ContractReport) -> str:
    """One line when the contract holds; else every difference, one a line, with its DDL."""
    if report.holds and not report.warnings:
        return f"TentMan application schema: contract holds ({len(TABLES)} tables, {len(UNIQUE_KEYS)} unique keys)"
    lines = []
    if report.errors:
        lines.append(f"TentMan application schema: {len(report.errors)} difference(s) billing cannot run with:")
        lines += [f"  error: {e}" for e in report.errors]
    else:
        lines.append("TentMan application schema: contract holds, but billing will be slow:")
    lines += [f"  warning: {w}" for w in report.warnings]
    return "\n".join(lines)


def _check_columns(table: Table, catalog: _Catalog, report: ContractReport) -> None:
    actual = catalog.columns(table.name)
    for column in table.columns:
        found = actual.get(column.name)
        where = f"{table.name}.{column.name}"
        if found is None:
            report.errors.append(
                f"missing column {where}: ALTER TABLE {table.name} ADD COLUMN {column.name} {column.types[0]};"
            )
            continue
        if found["base_type"] not in column.types:
            report.errors.append(
                f"column {where} is {found['type']}; billing expects {' or '.join(column.types)}: "
                f"ALTER TABLE {table.name} ALTER COLUMN {column.name} TYPE {column.types[0]};"
            )
        if column.written_null and found["not_null"]:
            report.errors.append(
                f"column {where} is NOT NULL, and billing writes NULL into it: "
                f"ALTER TABLE {table.name} ALTER COLUMN {column.name} DROP NOT NULL;"
            )
        if column.defaulted and not found["has_default"]:
            report.errors.append(
                f"column {where} has no default, and billing inserts rows without it: "
                f"ALTER TABLE {table.name} ALTER COLUMN {column.name} "
                + ("ADD GENERATED BY DEFAULT AS IDENTITY;" if column.name == "id" else "SET DEFAULT ...;")
            )
        for check in catalog.checks(table.name, column.name):
            if "'" not in check["definition"]:
                continue  # not a list of values (a length, a pattern): nothing billing writes is in question
            refused = [str(v) for v in column.written_values if f"'{v}'" not in check["definition"]]
            if refused:
                report.errors.append(
                    f"CHECK {check['name']} on {where} refuses {', '.join(repr(v) for v in refused)}, which billing "
                    f"writes (it accepts: {check['definition']}); billing writes {', '.join(column.written_values)}"
                )
    if table.billing_inserts:
        known = {c.name for c in table.columns}
        for name, found in actual.items():
            if name not in known and found["not_null"] and not found["has_default"]:
                report.errors.append(
                    f"column {table.name}.{name} is NOT NULL without a default, and billing inserts rows into "
                    f"{table.name} without it: ALTER TABLE {table.name} ALTER COLUMN {name} SET DEFAULT ...; "
                    f"(or DROP NOT NULL)"
                )


_MISSING_TABLE_FIX = (
    "the application's migrations create it; for a standalone database, "
    f"`tentman db upgrade --with-application-tables` creates all {len(TABLES)} tables (docs/schema.md has the DDL)"
)


def _normalized(expression: str | None) -> str:
    """A predicate as written here or as pg_get_expr() prints it, without casts, parentheses and spaces."""
    if not expression:
        return ""
    text = re.sub(r"::[a-z ]+(\(\d+\))?", "", expression.lower())
    return re.sub(r"[()\s]", "", text)


def _table_oids(conn: Connection) -> dict[str, int]:
    """The application's tables found on the connection's search_path, name -> oid."""
    rows = conn.execute(
        sa.text("SELECT name, to_regclass(name)::oid AS oid FROM unnest(CAST(:names AS text[])) AS name"),
        {"names": list(TABLE_NAMES)},
    ).all()
    return {r.name: r.oid for r in rows if r.oid is not None}


class _Catalog:
    """The catalog rows of the application's tables, read once per check."""

    def __init__(self, conn: Connection):
        self.oids = _table_oids(conn)
        self.names = {oid: name for name, oid in self.oids.items()}
        oids = list(self.oids.values())
        self._columns: dict[str, dict[str, dict]] = {name: {} for name in self.oids}
        for r in conn.execute(
            sa.text(
                """
                SELECT attrelid AS oid, attname, format_type(atttypid, atttypmod) AS type,
                       format_type(atttypid, NULL) AS base_type, attnotnull,
                       atthasdef OR attidentity <> '' AS has_default
                FROM pg_attribute
                WHERE attrelid = ANY(CAST(:oids AS oid[])) AND attnum > 0 AND NOT attisdropped
                """
            ),
            {"oids": oids},
        ):
            self._columns[self.names[r.oid]][r.attname] = {
                "type": r.type,
                "base_type": r.base_type,
                "not_null": r.attnotnull,
                "has_default": r.has_default,
            }
        self._indexes = conn.execute(
            sa.text(
                """
                SELECT i.indrelid AS oid, i.indisunique AS is_unique,
                       array(SELECT a.attname FROM unnest(i.indkey[0:i.indnkeyatts - 1]) WITH ORDINALITY k(attnum, n)
                             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                             ORDER BY k.n) AS columns,
                       pg_get_expr(i.indpred, i.indrelid) AS predicate
                FROM pg_index i
                WHERE i.indrelid = ANY(CAST(:oids AS oid[])) AND i.indisvalid AND i.indexprs IS NULL
                """
            ),
            {"oids": oids},
        ).all()
        self._constraints = conn.execute(
            sa.text(
                """
                SELECT c.conrelid AS oid, c.conname, c.contype, pg_get_constraintdef(c.oid) AS definition,
                       array(SELECT a.attname FROM unnest(c.conkey) k(attnum)
                             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum) AS columns,
                       c.confrelid::regclass::text AS referenced
                FROM pg_constraint c
                WHERE c.conrelid = ANY(CAST(:oids AS oid[])) AND c.contype IN ('c', 'f')
                """
            ),
            {"oids": oids},
        ).all()

    def columns(self, table: str) -> dict[str, dict]:
        return self._columns[table]

    def has_unique(self, key: UniqueKey) -> bool:
        oid = self.oids[key.table]
        return any(
            r.oid == oid
            and r.is_unique
            and sorted(r.columns) == sorted(key.columns)
            and _normalized(r.predicate) == _normalized(key.where)
            for r in self._indexes
        )

    def has_index(self, index: Index) -> bool:
        oid = self.oids[index.table]
        n = len(index.columns)
        return any(
            r.oid == oid
            and tuple(r.columns[:n]) == index.columns
            and (not r.predicate or _normalized(r.predicate) == _normalized(index.where))
            for r in self._indexes
        )

    def has_foreign_key(self, fk: ForeignKey) -> bool:
        oid = self.oids[fk.table]
        referenced = self.oids.get(fk.references)
        return any(
            r.oid == oid
            and r.contype == "f"
            and r.columns == [fk.column]
            and referenced is not None
            and self.oids.get(r.referenced.rpartition(".")[2]) == referenced
            and f"ON DELETE {fk.on_delete}" in r.definition
            for r in self._constraints
        )

    def checks(self, table: str, column: str) -> list[dict]:
        """The CHECK constraints on `column` alone (the ones that can refuse a value billing writes)."""
        oid = self.oids[table]
        return [
            {"name": r.conname, "definition": r.definition}
            for r in self._constraints
            if r.oid == oid and r.contype == "c" and r.columns == [column]
        ]


# --- A standalone database: the application's tables as the bundle has always created them.
# Only `tentman db upgrade --with-application-tables` runs this (the demo, the tests, compose).


def _sql_list(values: Iterable[str]) -> str:
    """`values` as the items of an SQL IN list: 'a', 'b'."""
    return ", ".join(f"'{value}'" for value in values)


APPLICATION_TABLES_DDL = f"""
CREATE TABLE organizations (
    id        bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    name      text,
    currency  char(3) DEFAULT 'USD',
    is_active boolean DEFAULT true
);

CREATE TABLE leases (
    id              bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    organization_id bigint,
    unit_label      text,
    tenant_name     text,
    start_date      date,
    end_date        date,           -- null = open-ended; inclusive
    monthly_rent    numeric(12, 2),
    status          text            -- draft | active | terminated | ended
);

CREATE TABLE lease_recurring_charges (
    id          bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    lease_id    bigint,
    charge_type text,
    description text,
    amount      numeric(12, 2),     -- per month
    start_date  date,
    end_date    date,
    is_active   boolean DEFAULT true
);

CREATE TABLE invoice_runs (
    id                   bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    organization_id      bigint NOT NULL REFERENCES organizations (id),
    run_type             text NOT NULL CHECK (run_type IN ({_sql_list(RunType)})),
    billing_period_start date NOT NULL,
    billing_period_end   date NOT NULL,
    proration_method     text,
    status               text NOT NULL
        CONSTRAINT invoice_runs_status_check CHECK (status IN ({_sql_list(RunStatus)})),
    total_leases         integer NOT NULL DEFAULT 0,
    success_count        integer NOT NULL DEFAULT 0,
    skipped_count        integer NOT NULL DEFAULT 0,
    failure_count        integer NOT NULL DEFAULT 0,
    errors               jsonb NOT NULL DEFAULT '[]'::jsonb,
    dag_id               text NOT NULL,
    dag_run_id           text NOT NULL,
    started_at           timestamptz NOT NULL DEFAULT now(),
    completed_at         timestamptz,
    CONSTRAINT invoice_runs_counts_add_up
        CHECK (total_leases = success_count + skipped_count + failure_count),
    CONSTRAINT invoice_runs_one_per_org_and_dag_run UNIQUE (dag_id, dag_run_id, organization_id)
);

CREATE TABLE invoices (
    id                   bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    organization_id      bigint NOT NULL REFERENCES organizations (id),
    lease_id             bigint NOT NULL REFERENCES leases (id),
    invoice_type         text NOT NULL CHECK (invoice_type IN ({_sql_list(InvoiceType)})),
    billing_period_start date NOT NULL,
    billing_period_end   date NOT NULL,
    status               text NOT NULL DEFAULT '{InvoiceStatus.DRAFT}'
        CHECK (status IN ({_sql_list(InvoiceStatus)})),
    currency             char(3) NOT NULL,
    subtotal             numeric(12, 2) NOT NULL,
    total                numeric(12, 2) NOT NULL,
    due_date             date NOT NULL,
    invoice_run_id       bigint REFERENCES invoice_runs (id) ON DELETE SET NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT invoices_one_per_lease_type_period UNIQUE (lease_id, invoice_type, billing_period_start)
);

CREATE TABLE invoice_lines (
    id                   bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    invoice_id           bigint NOT NULL REFERENCES invoices (id) ON DELETE CASCADE,
    line_type            text NOT NULL CHECK (line_type IN ({_sql_list(LineType)})),
    source_id            bigint NOT NULL,
    description          text NOT NULL,
    service_period_start date,
    service_period_end   date,
    amount               numeric(12, 2) NOT NULL,
    CONSTRAINT invoice_lines_one_per_source UNIQUE (invoice_id, line_type, source_id)
);

CREATE TABLE utility_statements (
    id              bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    organization_id bigint,
    lease_id        bigint,
    utility_type    text,
    period_start    date,
    period_end      date,
    amount          numeric(12, 2),
    status          text,           -- draft | finalized
    finalized_at    timestamptz,
    -- If the line goes away (its draft invoice deleted), the statement is pending again.
    invoice_line_id bigint REFERENCES invoice_lines (id) ON DELETE SET NULL
);
"""


def _contract_ddl() -> str:
    keys = [k.ddl() for k in UNIQUE_KEYS if k.where]  # the others are constraints of the tables above
    indexes = [i.ddl().replace(" CONCURRENTLY", "") for i in INDEXES]
    return "\n".join(keys + indexes)


def application_tables_ddl() -> str:
    """The DDL of the application's tables, with the unique keys and indexes of the contract."""
    return APPLICATION_TABLES_DDL + "\n" + _contract_ddl() + "\n"


def existing_application_tables(conn: Connection) -> list[str]:
    return list(_table_oids(conn))


def create_application_tables(conn: Connection) -> bool:
    """Create the application's tables when none exists; True when it created them.

    Never a part of them: a database holding some of the tables is the application's, half
    migrated or not TentMan's at all, and growing the rest there would hide that.
    """
    existing = existing_application_tables(conn)
    if len(existing) == len(TABLES):
        return False
    if existing:
        missing = [t for t in TABLE_NAMES if t not in existing]
        raise ValueError(
            f"this database has the application tables {', '.join(existing)} but not {', '.join(missing)}; "
            "refusing to create a part of the application's schema (--with-application-tables creates all "
            "of them in a database that has none)"
        )
    conn.exec_driver_sql(application_tables_ddl())
    return True
