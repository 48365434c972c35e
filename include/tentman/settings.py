"""Settings read from the environment.

This module is imported by the DAG files at parse time, so it must stay cheap: os.environ only,
no database, no Airflow imports.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from tentman.names import RunType

TENTMAN_CONN_ID = "tentman_db"
TENTMAN_CONN_ENV = "AIRFLOW_CONN_TENTMAN_DB"


def _int_env(name: str, default: int, minimum: int = 0, environ: Mapping[str, str] | None = None) -> int:
    raw = (os.environ if environ is None else environ).get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ValueError(f"{name}={value} must be at least {minimum}")
    return value


# The Airflow pool that caps how many organizations are billed at once across every billing run
# (rent, utility, backfills), i.e. the load on the TentMan database. Opt-in: a stock Airflow has
# only `default_pool`, and a task in a pool that does not exist waits forever with nothing in the
# UI saying why. A deployment creates the pool first (`airflow pools set tentman_billing …`), then
# sets TENTMAN_BILLING_POOL=tentman_billing on every Airflow component; ours all do (compose,
# `make up`, the test and benchmark stacks).
BILLING_POOL = "tentman_billing"
DEFAULT_POOL = "default_pool"
BILLING_POOL_DESCRIPTION = "TentMan organization billing tasks: organizations billed at once, all runs together"


@dataclass(frozen=True)
class OrganizationTaskPolicy:
    """Retry and concurrency policy of the per-organization billing tasks."""

    retries: int
    retry_delay: timedelta
    max_retry_delay: timedelta
    max_active_organizations: int
    pool: str


def organization_task_policy() -> OrganizationTaskPolicy:
    """Defaults: 10 retries, exponential backoff from 1 minute capped at 1 hour, 5 orgs at once."""
    return OrganizationTaskPolicy(
        retries=_int_env("TENTMAN_ORG_TASK_RETRIES", 10),
        retry_delay=timedelta(seconds=_int_env("TENTMAN_ORG_TASK_RETRY_DELAY_SECONDS", 60, 1)),
        max_retry_delay=timedelta(seconds=_int_env("TENTMAN_ORG_TASK_MAX_RETRY_DELAY_SECONDS", 3600, 1)),
        max_active_organizations=_int_env("TENTMAN_MAX_ACTIVE_ORGANIZATIONS", 5, 1),
        pool=billing_pool(),
    )


def billing_pool(environ: Mapping[str, str] | None = None) -> str:
    """The organization tasks' pool: TENTMAN_BILLING_POOL, default Airflow's `default_pool`."""
    return (os.environ if environ is None else environ).get("TENTMAN_BILLING_POOL", "").strip() or DEFAULT_POOL


def billing_pool_slots(environ: Mapping[str, str] | None = None) -> int:
    """Slots of the billing pool when a deployment creates it: TENTMAN_BILLING_POOL_SLOTS, default 10
    (two runs — rent and utility — at the default 5 organizations each)."""
    return _int_env("TENTMAN_BILLING_POOL_SLOTS", 10, 1, environ)


# Critical before routine: when rent and utility tasks wait for the same slots (the billing pool,
# the executor's parallelism, the Celery workers), Airflow's scheduler queues the waiting task with
# the highest priority_weight first, across every DAG. "absolute" makes a task's weight exactly
# this number (Airflow's default rule, "downstream", sums the weights below the task, so the
# weight of a DAG would depend on its shape); every task of a billing DAG gets its DAG's weight.
# Utility keeps Airflow's default weight (1): routine work among the deployment's other DAGs.
PRIORITY_WEIGHT_RULE = "absolute"
RENT_PRIORITY_WEIGHT = 100
UTILITY_PRIORITY_WEIGHT = 1
# Airflow stores priority_weight as a 32-bit integer.
MAX_PRIORITY_WEIGHT = 2**31 - 1


def priority_weight(run_type: str, environ: Mapping[str, str] | None = None) -> int:
    """The priority weight of a billing DAG's tasks: TENTMAN_RENT_PRIORITY_WEIGHT (default 100) or
    TENTMAN_UTILITY_PRIORITY_WEIGHT (default 1)."""
    name, default = {
        RunType.MONTHLY_RENT: ("TENTMAN_RENT_PRIORITY_WEIGHT", RENT_PRIORITY_WEIGHT),
        RunType.UTILITY: ("TENTMAN_UTILITY_PRIORITY_WEIGHT", UTILITY_PRIORITY_WEIGHT),
    }[run_type]
    weight = _int_env(name, default, 1, environ)
    if weight > MAX_PRIORITY_WEIGHT:
        raise ValueError(f"{name}={weight} must be at most {MAX_PRIORITY_WEIGHT} (Airflow stores a 32-bit integer)")
    return weight


# The default schedules (cron, UTC): the DAGs and their docs read them from here. The rent DAG's
# missed-run alert (deploy/monitoring/alert-rules.yml) and the docs that state them are copies,
# checked against these by tests/test_deployment.py and tests/orchestration/test_dags.py.
RENT_SCHEDULE = "0 2 26 * *"
UTILITY_SCHEDULE = "0 3 * * 1"
# The organization schedules DAG ticks every hour on the hour: an organization's own due hour is
# billed by the first tick at or after it.
SCHEDULES_TICK = "0 * * * *"


def _schedule(name: str, default: str) -> str | None:
    value = os.environ.get(name) or default
    # "manual": no schedule at all (benchmarks and staging: unpausing then starts no catch-up run).
    return None if value.strip().lower() == "manual" else value


def rent_schedule() -> str | None:
    """Cron of the monthly rent DAG (UTC); TENTMAN_RENT_SCHEDULE overrides it (tests, "manual")."""
    return _schedule("TENTMAN_RENT_SCHEDULE", RENT_SCHEDULE)


def utility_schedule() -> str | None:
    """Cron of the utility DAG (UTC); TENTMAN_UTILITY_SCHEDULE overrides it."""
    return _schedule("TENTMAN_UTILITY_SCHEDULE", UTILITY_SCHEDULE)


def schedules_tick() -> str | None:
    """Cron of the organization schedules DAG (UTC); TENTMAN_SCHEDULES_TICK overrides it ("manual":
    it only runs when triggered, as in the tests that trigger each tick themselves)."""
    return _schedule("TENTMAN_SCHEDULES_TICK", SCHEDULES_TICK)


def tentman_database_uri() -> str:
    """The TentMan database URI of the `tentman_db` Airflow connection, from the environment."""
    uri = os.environ.get(TENTMAN_CONN_ENV, "").strip()
    if not uri:
        raise RuntimeError(
            f"{TENTMAN_CONN_ENV} is not set: set it to a postgresql:// URI of the TentMan database "
            "(e.g. postgresql://postgres@127.0.0.1:5432/tentman)"
        )
    return uri


def utility_due_days() -> int:
    """Days after the end of the billing period a utility invoice is due (default 0: period end)."""
    return _int_env("TENTMAN_UTILITY_DUE_DAYS", 0)


# Every TENTMAN_* variable this package reads, in the order docs/deployment.md lists them. Each
# must reach every Airflow component: docker-compose.yaml passes each one from `.env` (empty when
# unset, which means the default above — except the pool, which compose opts into;
# tests/test_deployment.py checks both), `.env.example` lists each one.
ENVIRONMENT_VARIABLES = (
    "TENTMAN_ORG_TASK_RETRIES",
    "TENTMAN_ORG_TASK_RETRY_DELAY_SECONDS",
    "TENTMAN_ORG_TASK_MAX_RETRY_DELAY_SECONDS",
    "TENTMAN_MAX_ACTIVE_ORGANIZATIONS",
    "TENTMAN_BILLING_POOL",
    "TENTMAN_BILLING_POOL_SLOTS",
    "TENTMAN_RENT_PRIORITY_WEIGHT",
    "TENTMAN_UTILITY_PRIORITY_WEIGHT",
    "TENTMAN_UTILITY_DUE_DAYS",
    "TENTMAN_RENT_SCHEDULE",
    "TENTMAN_UTILITY_SCHEDULE",
    "TENTMAN_SCHEDULES_TICK",
)
