"""What one DAG run bills, and the parsing of the run's params into it.

Resolved and validated once, by the first task (tentman.runs.resolve), then passed to every task:
Airflow carries it between tasks as an XCom, so it travels as a plain JSON-able dict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tentman.billing.periods import BillingPeriod
from tentman.names import ProrationMethod, RunType


@dataclass(frozen=True)
class BillingRun:
    """What one DAG run bills: its type, period, explicit proration method, dry run and organizations."""

    run_type: str
    billing_period_start: str
    billing_period_end: str
    # Set only when the run's params name one (it then wins); None: each organization's own method.
    proration_method: str | None
    dry_run: bool
    organization_ids: list[int] | None

    @property
    def period(self) -> BillingPeriod:
        return BillingPeriod.from_dict(asdict(self))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BillingRun:
        return cls(**data)


def parse_organization_ids(value: object) -> list[int] | None:
    """The `organization_ids` param: sorted distinct ids, or None for every active organization."""
    expected = "expected a non-empty list of organization ids (whole numbers), or null for all active organizations"
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"organization_ids {value!r} is not valid; {expected}")
    ids = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, str)) or not str(item).strip().isdigit():
            raise ValueError(f"organization_ids contains {item!r}; {expected}")
        ids.append(int(item))
    return sorted(set(ids))


def parse_dry_run(value: object) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValueError(f"dry_run {value!r} is not valid; expected true or false")
    return value


def parse_run_proration_method(run_type: str, value: object) -> str | None:
    """The run's explicit method (validated), or None: each organization is billed with its own."""
    if run_type != RunType.MONTHLY_RENT or value is None:
        return None
    return ProrationMethod.parse(value).value
