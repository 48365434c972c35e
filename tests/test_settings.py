"""Settings read from the environment: defaults, overrides, and errors that name the bad value."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tentman import settings
from tentman.names import RunType

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in (*settings.ENVIRONMENT_VARIABLES, "AIRFLOW_CONN_TENTMAN_DB"):
        monkeypatch.delenv(name, raising=False)


def test_every_tentman_variable_read_in_production_is_listed():
    """ENVIRONMENT_VARIABLES is the list docker-compose.yaml, .env.example and docs/deployment.md
    are checked against: every TENTMAN_* name the production code (all but dev/) spells is in it."""
    import re

    from tentman_dev.local import REPO_ROOT

    package = REPO_ROOT / "include" / "tentman"
    sources = [
        path
        for folder in (package, REPO_ROOT / "dags", REPO_ROOT / "plugins", REPO_ROOT / "config")
        for path in folder.rglob("*.py")
        if "dev" not in path.relative_to(REPO_ROOT).parts
    ]
    spelled = {name for path in sources for name in re.findall(r"[\"'](TENTMAN_[A-Z0-9_]+)[\"']", path.read_text())}
    assert spelled == set(settings.ENVIRONMENT_VARIABLES)
    assert len(set(settings.ENVIRONMENT_VARIABLES)) == len(settings.ENVIRONMENT_VARIABLES)
    table = (REPO_ROOT / "docs" / "deployment.md").read_text().split("\n## Environment variables\n", 1)[1]
    table = table.split("\n## ", 1)[0]
    for name in settings.ENVIRONMENT_VARIABLES:
        assert f"`{name}`" in table, name


def test_defaults():
    policy = settings.organization_task_policy()
    assert policy == settings.OrganizationTaskPolicy(
        retries=10,
        retry_delay=timedelta(minutes=1),
        max_retry_delay=timedelta(hours=1),
        max_active_organizations=5,
        pool="default_pool",  # a stock Airflow has no other pool: the billing pool is opt-in
    )
    assert settings.billing_pool_slots() == 10
    assert (settings.rent_schedule(), settings.utility_schedule()) == ("0 2 26 * *", "0 3 * * 1")
    assert settings.utility_due_days() == 0
    # Critical before routine: rent's tasks outrank utility's, which keep Airflow's default weight.
    assert (settings.priority_weight(RunType.MONTHLY_RENT), settings.priority_weight(RunType.UTILITY)) == (100, 1)


def test_overrides(monkeypatch):
    monkeypatch.setenv("TENTMAN_ORG_TASK_RETRIES", "3")
    monkeypatch.setenv("TENTMAN_MAX_ACTIVE_ORGANIZATIONS", "16")
    monkeypatch.setenv("TENTMAN_BILLING_POOL", "tentman_billing")
    monkeypatch.setenv("TENTMAN_RENT_SCHEDULE", "manual")
    monkeypatch.setenv("TENTMAN_UTILITY_SCHEDULE", "*/5 * * * *")
    policy = settings.organization_task_policy()
    assert (policy.retries, policy.max_active_organizations, policy.pool) == (3, 16, "tentman_billing")
    assert settings.rent_schedule() is None  # "manual": no schedule at all
    assert settings.utility_schedule() == "*/5 * * * *"
    assert settings.billing_pool_slots({"TENTMAN_BILLING_POOL_SLOTS": "24"}) == 24
    weights = {"TENTMAN_RENT_PRIORITY_WEIGHT": "500", "TENTMAN_UTILITY_PRIORITY_WEIGHT": "20"}
    assert (
        settings.priority_weight(RunType.MONTHLY_RENT, weights),
        settings.priority_weight(RunType.UTILITY, weights),
    ) == (500, 20)


@pytest.mark.parametrize(
    "value, message",
    [
        ("high", "TENTMAN_RENT_PRIORITY_WEIGHT='high' is not a whole number"),
        ("0", "TENTMAN_RENT_PRIORITY_WEIGHT=0 must be at least 1"),
        (
            "3000000000",
            "TENTMAN_RENT_PRIORITY_WEIGHT=3000000000 must be at most 2147483647 (Airflow stores a 32-bit integer)",
        ),
    ],
)
def test_a_bad_priority_weight_is_named(value, message):
    with pytest.raises(ValueError) as err:
        settings.priority_weight(RunType.MONTHLY_RENT, {"TENTMAN_RENT_PRIORITY_WEIGHT": value})
    assert str(err.value) == message


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("TENTMAN_ORG_TASK_RETRIES", "ten", "TENTMAN_ORG_TASK_RETRIES='ten' is not a whole number"),
        ("TENTMAN_ORG_TASK_RETRIES", "-1", "TENTMAN_ORG_TASK_RETRIES=-1 must be at least 0"),
        ("TENTMAN_MAX_ACTIVE_ORGANIZATIONS", "0", "TENTMAN_MAX_ACTIVE_ORGANIZATIONS=0 must be at least 1"),
        ("TENTMAN_ORG_TASK_RETRY_DELAY_SECONDS", "0", "TENTMAN_ORG_TASK_RETRY_DELAY_SECONDS=0 must be at least 1"),
    ],
)
def test_a_bad_value_is_named(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as err:
        settings.organization_task_policy()
    assert str(err.value) == message


def test_missing_connection_names_the_variable():
    with pytest.raises(RuntimeError, match="AIRFLOW_CONN_TENTMAN_DB is not set"):
        settings.tentman_database_uri()
