"""Airflow local settings of the TentMan deployment; Airflow imports this file at start-up in
every component, from $AIRFLOW_HOME/config (compose: the image copies it there; local stacks put
this folder on PYTHONPATH).

It only preloads the billing tasks' imports into the scheduler (or Celery worker), and Airflow's
plugins before it forks task processes: see tentman.orchestration.task_preload. A deployment with
its own local settings adds these lines to it.
"""

__all__: list[str] = []  # no Airflow setting or cluster policy is defined here

try:
    from tentman.orchestration.task_preload import load_plugins_before_forking, preload_task_modules
except ImportError:  # an Airflow image without the TentMan package: nothing to preload
    pass
else:
    preload_task_modules()
    load_plugins_before_forking()
