"""TentMan billing: the package behind the Airflow DAGs. Each folder says where its code runs.

- `names`, `settings`, `db`, `migrate`, `migrations/`, `cli`: shared, cheap to import;
- `engine/`: billing rules and set-based SQL over a caller's connection (no Airflow);
- `runs/`: the DAG steps as plain functions, `invoice_runs` rows, run summaries (no Airflow);
- `orchestration/`: the Airflow side — DAG factory, params, alerts, task preload, connection;
- `ui/`: the "Billing runs" page and API, served by the Airflow plugin;
- `dev/`: developer tooling that never runs in production (embedded servers, demo, benchmarks).

tests/test_architecture.py holds these folders to the imports they may make.
"""
