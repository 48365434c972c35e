"""The billing engine: rules and set-based SQL on a caller's connection; no Airflow import here."""
