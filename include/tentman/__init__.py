"""TentMan billing: the domain behind the Airflow DAGs (schema, billing engine, CLI).

Importable without Airflow: the DAG files call into this package, and tests exercise it
directly against PostgreSQL.
"""
