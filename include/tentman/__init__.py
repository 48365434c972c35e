"""TentMan billing: the package behind the Airflow DAGs. Each folder says where its code runs.

- `names`, `settings`, `deployment`, `db`, `application_schema`, `migrate`, `migrations/`, `cli`: shared;
- `billing/`: billing rules and set-based SQL over a caller's connection (no Airflow);
- `runs/`: the DAG steps as plain functions, `invoice_runs` rows, run summaries (no Airflow);
- `orchestration/`: the Airflow side — DAG factory, params, alerts, task preload, connection;
- `ui/`: the "Billing runs" page and API, served by the Airflow plugin;
- `plugin`: that Airflow plugin, found by Airflow through the distribution's entry point.

Developer tooling (embedded servers, demo, benchmarks) is the `tentman_dev` package under dev/,
which is not part of this distribution. tests/test_architecture.py holds these folders to the
imports they may make.
"""

# The one definition of the version: the distribution's (pyproject.toml reads it) and `tentman --version`'s.
__version__ = "0.2.0"
