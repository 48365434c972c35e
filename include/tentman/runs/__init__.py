"""A billing DAG run's steps as plain functions, its `invoice_runs` rows and summaries; no Airflow import."""
