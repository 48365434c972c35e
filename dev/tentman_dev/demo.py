"""Demo data set of `make demo`: a few organizations with the cases billing has to get right.

All dates are fixed so the demo is reproducible: the rent run of 2026-11-26 bills December 2026
and the utility run of Monday 2026-12-07 bills December 2026.
"""

from __future__ import annotations

import random
from datetime import date
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tentman.billing.leases import LeaseStatus
from tentman.names import InvoiceStatus, InvoiceType, StatementStatus

# The statuses the demo's leases and statements have.
ACTIVE, NOT_STARTED, TERMINATED = LeaseStatus.ACTIVE, LeaseStatus.DRAFT, LeaseStatus.TERMINATED
FINALIZED, NOT_FINAL = StatementStatus.FINALIZED, StatementStatus.DRAFT

DEMO_RENT_LOGICAL_DATE = "2026-11-26T02:00:00+00:00"
DEMO_UTILITY_LOGICAL_DATE = "2026-12-07T03:00:00+00:00"

ORGANIZATIONS = [
    # id, name, currency, is_active
    (1, "Harbor View Properties", "USD", True),
    (2, "Maple Street Rentals", "EUR", True),
    (3, "Cedar Lofts", "CAD", True),
    (4, "Dormant Holdings", "USD", False),
]

# Hand-picked leases of Harbor View: every case the rent run must get right.
# id, org, unit, tenant, start, end, rent, status
SPECIAL_LEASES = [
    (101, 1, "101", "Alice Moreau", date(2025, 6, 1), None, Decimal("1500.00"), ACTIVE),
    (102, 1, "102", "Bruno Silva", date(2026, 12, 10), None, Decimal("1800.00"), ACTIVE),  # moves in
    (103, 1, "103", "Chloe Martin", date(2024, 1, 1), date(2026, 12, 20), Decimal("1200.00"), ACTIVE),  # moves out
    (104, 1, "104", "Dmitri Volkov", date(2023, 3, 1), date(2026, 10, 31), Decimal("1300.00"), TERMINATED),
    (105, 1, "105", "Emma Novak", date(2025, 2, 1), None, Decimal("-50.00"), ACTIVE),  # bad data
    (106, 1, "106", "Farid Haddad", date(2024, 9, 1), None, Decimal("1650.00"), ACTIVE),  # invoice issued
    (107, 1, "107", "Grace Liu", date(2027, 1, 1), None, Decimal("1400.00"), NOT_STARTED),  # not started
    (108, 1, "108", "Hugo Weber", date(2026, 12, 5), date(2026, 12, 18), Decimal("2000.00"), ACTIVE),  # short stay
]

# id, lease, type, description, amount, start, end
SPECIAL_CHARGES = [
    (1001, 101, "parking", "Parking space P4", Decimal("75.00"), date(2025, 6, 1), None),
    (1002, 101, "pet", "Pet fee (dog)", Decimal("25.00"), date(2026, 12, 15), None),  # starts mid-month
    (1003, 102, "storage", "Storage locker", Decimal("40.00"), date(2026, 12, 10), None),
    (1004, 103, "parking", "Parking space P9", Decimal("60.00"), date(2024, 1, 1), date(2026, 12, 20)),
]

GENERATED_LEASES_PER_ORG = {1: 12, 2: 20, 3: 16}

# Utility statements (utility run of December 2026).
# id, org, lease, type, period start, period end, amount, status, finalized_at
UTILITY_STATEMENTS = [
    (5001, 1, 101, "water", date(2026, 11, 1), date(2026, 11, 30), Decimal("42.17"), FINALIZED, "2026-12-02"),
    (5002, 1, 101, "electricity", date(2026, 11, 1), date(2026, 11, 30), Decimal("88.40"), FINALIZED, "2026-12-02"),
    (5003, 1, 102, "water", date(2026, 10, 1), date(2026, 10, 31), Decimal("19.95"), FINALIZED, "2026-12-03"),  # late
    (5004, 1, 103, "gas", date(2026, 11, 1), date(2026, 11, 30), Decimal("31.00"), NOT_FINAL, None),  # not final
    (
        5005,
        1,
        104,
        "water",
        date(2026, 10, 1),
        date(2026, 10, 31),
        Decimal("27.30"),
        FINALIZED,
        "2026-11-20",
    ),  # moved out
    (5006, 1, 106, "electricity", date(2026, 11, 1), date(2026, 11, 30), None, FINALIZED, "2026-12-02"),  # bad
    (
        5007,
        2,
        None,
        "water",
        date(2026, 11, 1),
        date(2026, 11, 30),
        Decimal("15.00"),
        FINALIZED,
        "2026-12-01",
    ),  # no lease
    (5008, 1, 101, "water", date(2026, 12, 1), date(2026, 12, 31), Decimal("40.00"), FINALIZED, "2026-12-01"),
    (
        5009,
        1,
        108,
        "electricity",
        date(2026, 12, 5),
        date(2026, 12, 18),
        Decimal("-12.50"),
        FINALIZED,
        "2026-12-04",
    ),  # credit
]

_UNITS = ["A", "B", "C", "D"]
_FIRST = ["Ana", "Ben", "Carla", "Deniz", "Eli", "Fatima", "Gabe", "Hana", "Ivo", "Jade", "Kofi", "Lena"]
_LAST = ["Okafor", "Schmidt", "Rossi", "Kim", "Dubois", "Nakamura", "Costa", "Berg", "Singh", "Lopez"]


def _generated_leases() -> tuple[list[tuple], list[tuple]]:
    """Ordinary leases for every organization: stable across runs (seeded)."""
    rng = random.Random(2026)
    leases, charges = [], []
    lease_id, charge_id = 200, 2000
    for org_id, count in GENERATED_LEASES_PER_ORG.items():
        for n in range(count):
            lease_id += 1
            start = date(rng.choice([2023, 2024, 2025, 2026]), rng.randint(1, 12), 1)
            if start > date(2026, 11, 1):
                start = date(2026, 11, 1)
            end = None
            roll = rng.random()
            if roll < 0.12:
                end = date(2026, 12, rng.randint(3, 27))  # leaves mid-December
            elif roll < 0.2:
                end = date(2027, rng.randint(1, 12), 28)
            rent = Decimal(rng.randrange(90000, 320000, 500)) / 100
            unit = f"{_UNITS[n % 4]}{n // 4 + 1:02d}"
            tenant = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
            leases.append((lease_id, org_id, unit, tenant, start, end, rent, ACTIVE))
            if rng.random() < 0.4:
                charge_id += 1
                charges.append((charge_id, lease_id, "parking", f"Parking space {unit}", Decimal("65.00"), start, None))
    return leases, charges


def load_demo_data(conn: Connection) -> bool:
    """Insert the demo data set into an empty database; returns whether anything was loaded.

    Idempotent: parts already present are left as they are (utility statements are loaded on
    their own when a database that has the rest was migrated to a schema with statements).
    """
    if conn.execute(sa.text("SELECT EXISTS (SELECT 1 FROM organizations)")).scalar():
        return _load_utility_statements(conn)
    generated_leases, generated_charges = _generated_leases()
    conn.execute(
        sa.text("INSERT INTO organizations (id, name, currency, is_active) VALUES (:id, :name, :currency, :active)"),
        [dict(zip(("id", "name", "currency", "active"), organization, strict=False)) for organization in ORGANIZATIONS],
    )
    lease_keys = ("id", "org", "unit", "tenant", "start", "end", "rent", "status")
    conn.execute(
        sa.text(
            """
            INSERT INTO leases (id, organization_id, unit_label, tenant_name, start_date, end_date,
                                monthly_rent, status)
            VALUES (:id, :org, :unit, :tenant, :start, :end, :rent, :status)
            """
        ),
        [dict(zip(lease_keys, lease, strict=False)) for lease in SPECIAL_LEASES + generated_leases],
    )
    charge_keys = ("id", "lease", "type", "description", "amount", "start", "end")
    conn.execute(
        sa.text(
            """
            INSERT INTO lease_recurring_charges (id, lease_id, charge_type, description, amount, start_date, end_date)
            VALUES (:id, :lease, :type, :description, :amount, :start, :end)
            """
        ),
        [dict(zip(charge_keys, charge, strict=False)) for charge in SPECIAL_CHARGES + generated_charges],
    )
    # December's rent invoice of lease 106 was already issued by a property manager.
    conn.execute(
        sa.text(
            """
            INSERT INTO invoices (organization_id, lease_id, invoice_type, billing_period_start, billing_period_end,
                                  status, currency, subtotal, total, due_date)
            VALUES (1, 106, :rent, DATE '2026-12-01', DATE '2026-12-31', :issued, 'USD', 1650.00, 1650.00,
                    DATE '2026-12-01')
            """
        ),
        {"rent": InvoiceType.RENT, "issued": InvoiceStatus.ISSUED},
    )
    _load_utility_statements(conn)
    # Explicit ids were inserted: move the identity sequences past them.
    for table in ("organizations", "leases", "lease_recurring_charges"):
        conn.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"))
    return True


def _load_utility_statements(conn: Connection) -> bool:
    if conn.execute(sa.text("SELECT EXISTS (SELECT 1 FROM utility_statements)")).scalar():
        return False
    keys = ("id", "org", "lease", "type", "start", "end", "amount", "status", "finalized")
    conn.execute(
        sa.text(
            """
            INSERT INTO utility_statements (id, organization_id, lease_id, utility_type, period_start, period_end,
                                            amount, status, finalized_at)
            VALUES (:id, :org, :lease, :type, :start, :end, :amount, :status, CAST(:finalized AS timestamptz))
            """
        ),
        [dict(zip(keys, statement, strict=False)) for statement in UTILITY_STATEMENTS],
    )
    conn.execute(
        sa.text(
            "SELECT setval(pg_get_serial_sequence('utility_statements', 'id'), "
            "(SELECT max(id) FROM utility_statements))"
        )
    )
    return True
