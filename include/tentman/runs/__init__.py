"""A billing DAG run's steps as plain functions (resolve, organizations, bill, record: one module
each, passing a BillingRun), its `invoice_runs` rows and summaries; no Airflow import."""
