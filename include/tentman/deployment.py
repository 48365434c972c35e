"""Airflow settings a billing deployment runs with, whatever starts it (compose, a local stack, a test).

Defined here, in the shipped package, because they are production facts: docker-compose.yaml sets
the same values (tests/test_deployment.py compares them) and the developer stacks of `tentman_dev`
import them from here. The standard library only: read by tooling that must not load Airflow.
"""

# [core] max_map_length: one mapped task per organization, room for ten thousand organizations and
# growth. Airflow's default, 1024, stops at organization 1,025.
MAX_MAP_LENGTH = 16384

# How soon a dead worker or scheduler is noticed. Airflow's defaults wait 300 s for each; a billing
# deployment runs with these (compose's Celery profile and the tests use the same; the trade-offs
# are in docs/deployment.md "Failure detection").
FAILURE_DETECTION = {
    # A running task that stopped heartbeating (its worker died) is failed, then retried, after this.
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
    # A scheduler is dead when its last heartbeat is older than this ...
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "30",
    # ... and a live scheduler looks for the dead ones' tasks to adopt this often.
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "30",
    # A task queued but never started (its message lost with a broker) is rescheduled after this.
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "300",
}

# How long the scheduler sleeps after a loop that queued nothing and saw no task end. Airflow's
# default, 1 s, can leave a freed slot empty for that second while organization tasks end every
# few hundredths of one. Measured pairwise on the control DAG (docs/scaling.md "Below the floor"):
# 0.2 s ran 300 mapped tasks in 0.84x the time (0.81-0.94x) at 0.94x the CPU per task; an idle
# scheduler loops five times as often for it.
SCHEDULING = {"AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2"}
