"""The trigger form's params accept and refuse what the run steps do, from one definition of each name.

Airflow reads its configuration when it is first imported, and the DAG tests of this session
configure it first; so the params are validated by Airflow in a child process, all cases at once.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import pytest

from tentman.billing.periods import BillingPeriod
from tentman.names import DEFAULT_PRORATION_METHOD, ProrationMethod, organization_label

pytestmark = pytest.mark.unit

MONTHS = ["2026-02", "2026-12", "1999-01", "2026-13", "2026-00", "26-01", "2026-1", "2026/02", " 2026-02", ""]
ORGANIZATION_IDS = [(None, True), ([1, 2], True), ([], False), (["1"], False), (3, False), ([1.5], False)]
PRORATION_METHODS = [
    "ActualDaysInMonth",
    "ThirtyDayMonth",
    "Annual365",
    "NoProration",
    "actualdaysinmonth",
    "Daily",
    "",
    None,
]
DRY_RUNS = [(True, True), (False, True), ("yes", False), (None, False)]

_VALIDATE = """
import json, sys
from airflow.sdk.exceptions import ParamValidationError
from tentman.orchestration import params

forms = {
    "billing_month": lambda: params.billing_month_param("x"),
    "organization_ids": params.organization_ids_param,
    "proration_method": params.proration_method_param,
    "dry_run": params.dry_run_param,
}
verdicts = []
for name, value in json.load(sys.stdin):
    try:
        forms[name]().resolve(value)  # a fresh Param each time: resolve() keeps the value it resolved
        verdicts.append(True)
    except ParamValidationError:
        verdicts.append(False)
defaults = {name: form().resolve() for name, form in forms.items()}
print(json.dumps({"verdicts": verdicts, "defaults": defaults}))
"""


@functools.cache
def _form() -> tuple[dict, dict]:
    """What Airflow's trigger form accepts: {(param, value as JSON): accepted}, and the defaults."""
    cases = (
        [("billing_month", m) for m in MONTHS]
        + [("organization_ids", v) for v, _ in ORGANIZATION_IDS]
        + [("proration_method", m) for m in PRORATION_METHODS]
        + [("dry_run", v) for v, _ in DRY_RUNS]
    )
    out = subprocess.run(
        [sys.executable, "-c", _VALIDATE], input=json.dumps(cases), capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    verdicts = {(name, json.dumps(value)): ok for (name, value), ok in zip(cases, result["verdicts"], strict=True)}
    return verdicts, result["defaults"]


def _accepted(name: str, value) -> bool:
    return _form()[0][(name, json.dumps(value))]


def _parses(month: str) -> bool:
    try:
        BillingPeriod.parse(month)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("month", MONTHS)
def test_the_form_and_the_run_agree_on_billing_months(month):
    assert _accepted("billing_month", month) == _parses(month)


def test_defaults():
    assert _form()[1] == {
        "billing_month": None,
        "organization_ids": None,
        # Null: each organization's own method, else the platform default (ActualDaysInMonth).
        "proration_method": None,
        "dry_run": False,
    }
    assert DEFAULT_PRORATION_METHOD.value == "ActualDaysInMonth"


def test_proration_methods():
    accepted = [m for m in PRORATION_METHODS if _accepted("proration_method", m)]
    # The four names, and null: "each organization's own method".
    assert accepted == [m.value for m in ProrationMethod] + [None]
    with pytest.raises(
        ValueError, match="proration_method 'Daily' is not supported; expected one of ActualDaysInMonth"
    ):
        ProrationMethod.parse("Daily")
    assert ProrationMethod.parse(None) is DEFAULT_PRORATION_METHOD


@pytest.mark.parametrize("value, accepted", ORGANIZATION_IDS)
def test_organization_ids(value, accepted):
    assert _accepted("organization_ids", value) == accepted


@pytest.mark.parametrize("value, accepted", DRY_RUNS)
def test_dry_run_is_a_boolean(value, accepted):
    assert _accepted("dry_run", value) == accepted


def test_organization_label():
    assert organization_label("Acme Homes", 3) == "Acme Homes (#3)"
    assert organization_label(None, 4) == "organization (#4)"
