"""The Airflow side: DAG factory and params, failure alerts, task preload, the connection to TentMan."""
