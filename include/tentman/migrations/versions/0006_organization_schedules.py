"""Organization schedules: a time zone and an own rent and utility schedule per organization, and
the claims that make each scheduled period billed once.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

The five settings are nullable (null: UTC and the default crons, as before) and come in pairs: a
day or weekday without its hour, or the reverse, is refused by the database as by the API
(tentman.billing.schedules states the ranges). The audit gains their before and after values.
A claim row says "this organization is being billed, or was billed, on its own schedule for this
period" (rent: the billing month; utility: the local date of the due time); its primary key is
what makes a period billed once by the schedules DAG (tentman.runs.schedules says how).
"""

from alembic import op

from tentman.names import BILLING_SETTINGS_AUDIT_TABLE, BILLING_SETTINGS_TABLE, SCHEDULE_CLAIMS_TABLE, RunType

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_SETTINGS = (
    ("timezone", "text"),
    ("rent_schedule_day", "smallint"),
    ("rent_schedule_hour", "smallint"),
    ("utility_schedule_weekday", "smallint"),
    ("utility_schedule_hour", "smallint"),
)
_RUN_TYPES = ", ".join(f"'{t.value}'" for t in RunType)


def upgrade() -> None:
    audit_columns = ",\n".join(f"ADD COLUMN {age}_{name} {kind}" for name, kind in _SETTINGS for age in ("old", "new"))
    op.execute(
        f"""
        ALTER TABLE {BILLING_SETTINGS_TABLE}
            ADD COLUMN timezone text,
            ADD COLUMN rent_schedule_day smallint
                CONSTRAINT organization_billing_settings_rent_schedule_day_check
                CHECK (rent_schedule_day BETWEEN 1 AND 28),
            ADD COLUMN rent_schedule_hour smallint
                CONSTRAINT organization_billing_settings_rent_schedule_hour_check
                CHECK (rent_schedule_hour BETWEEN 0 AND 23),
            ADD COLUMN utility_schedule_weekday smallint
                CONSTRAINT organization_billing_settings_utility_schedule_weekday_check
                CHECK (utility_schedule_weekday BETWEEN 1 AND 7),
            ADD COLUMN utility_schedule_hour smallint
                CONSTRAINT organization_billing_settings_utility_schedule_hour_check
                CHECK (utility_schedule_hour BETWEEN 0 AND 23),
            ADD CONSTRAINT organization_billing_settings_rent_schedule_pair
                CHECK ((rent_schedule_day IS NULL) = (rent_schedule_hour IS NULL)),
            ADD CONSTRAINT organization_billing_settings_utility_schedule_pair
                CHECK ((utility_schedule_weekday IS NULL) = (utility_schedule_hour IS NULL));

        ALTER TABLE {BILLING_SETTINGS_AUDIT_TABLE}
            {audit_columns};

        CREATE TABLE {SCHEDULE_CLAIMS_TABLE} (
            organization_id bigint NOT NULL,
            run_type        text NOT NULL CHECK (run_type IN ({_RUN_TYPES})),
            -- Rent: the first day of the billing month; utility: the local date of the due time.
            period_key      date NOT NULL,
            due_at          timestamptz NOT NULL,
            billing_period_start date NOT NULL,
            billing_period_end   date NOT NULL,
            -- The run of the schedules DAG that claimed it (and bills it).
            dag_id          text NOT NULL,
            dag_run_id      text NOT NULL,
            claimed_at      timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (organization_id, run_type, period_key)
        );
        CREATE INDEX organization_schedule_claims_run_idx ON {SCHEDULE_CLAIMS_TABLE} (dag_id, dag_run_id);
        """
    )


def downgrade() -> None:
    drop_audit = ",\n".join(f"DROP COLUMN {age}_{name}" for name, _ in _SETTINGS for age in ("old", "new"))
    drop_settings = ",\n".join(f"DROP COLUMN {name}" for name, _ in _SETTINGS)
    op.execute(
        f"""
        DROP TABLE {SCHEDULE_CLAIMS_TABLE};
        ALTER TABLE {BILLING_SETTINGS_AUDIT_TABLE} {drop_audit};
        ALTER TABLE {BILLING_SETTINGS_TABLE} {drop_settings};
        """
    )
