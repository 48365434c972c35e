"""Imports every billing task needs, done once in the process that forks the task processes.

With the LocalExecutor each task runs in a process forked from the scheduler (with Celery, from a
worker); whatever that parent has imported, the child starts with. A billing task otherwise
spends most of its own CPU importing psycopg, SQLAlchemy's psycopg dialect, the Task SDK's DAG
authoring modules and the billing code — about 0.1 s per organization task, measured with
`make bench-scale`, which at 2,000 organizations is as much as the billing itself.

The same parent also loads Airflow's plugins once for all its task processes
(`load_plugins_before_forking`): otherwise every task process loads them again when it starts
(the plugins folder's files executed, every installed distribution's entry points read), about
10 ms of CPU per task whatever the task does.

Called from `config/airflow_local_settings.py`, which Airflow imports at start-up in every
component ($AIRFLOW_HOME/config is on its path). Nothing here opens a connection: only modules
are loaded, so forking after it is safe.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os

log = logging.getLogger(__name__)

TASK_MODULES = (
    "psycopg",
    "sqlalchemy.dialects.postgresql.psycopg",
    # The DAG files' own imports: the Task SDK's authoring modules, names, settings, params, alerts.
    "tentman.orchestration.dag_factory",
    "tentman.orchestration.params",
    # What the tasks import when they run: the Airflow connection's engine, the run steps and,
    # through them, both engines (rent, utility and what they share), periods and proration.
    "tentman.orchestration.connection",
    "tentman.runs.resolve",
    "tentman.runs.organizations",
    "tentman.runs.bill",
    "tentman.runs.record",
    "tentman.orchestration.metrics",
)


def preload_task_modules() -> list[str]:
    """Import TASK_MODULES; a module that fails to import is logged and skipped (tasks import it
    themselves, only slower). Returns the modules that failed."""
    failed = []
    for name in TASK_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a preload must never stop an Airflow component starting
            log.warning("tentman: could not preload %s; billing tasks will import it themselves", name, exc_info=True)
            failed.append(name)
    return failed


def load_plugins_before_forking() -> None:
    """Load Airflow's plugins, as a task process does when it starts, in this process right before
    it first forks (os.register_at_fork), so that the task processes it forks inherit them loaded.

    Not at import: Airflow imports the local settings before it configures logging and its
    database, and a plugin may need both. The Task SDK keeps the plugins it loaded for the life of
    a process (functools.cache), so only the first fork of a process loads them; a plugin added
    later reaches the tasks when the scheduler or worker restarts, as it reaches the scheduler.
    """
    os.register_at_fork(before=_load_task_sdk_plugins)


# Once per process, whatever the outcome: the hook runs before every fork (every task with
# LocalExecutor), and a failure would otherwise be retried and logged at each one.
@functools.cache
def _load_task_sdk_plugins() -> None:
    try:
        # What the task runner calls first thing; cached, with the plugins it loads.
        from airflow.sdk.listener import get_listener_manager

        get_listener_manager()
    except Exception:  # noqa: BLE001 - never stop a fork: each task then loads the plugins itself
        log.warning(
            "tentman: could not load Airflow's plugins before forking; each task process will load them itself",
            exc_info=True,
        )
