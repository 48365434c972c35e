#!/usr/bin/env bash
# Creates the two databases of the deployment (Airflow metadata, TentMan) with their own roles.
# The passwords come from the environment (see .env.example); psql quotes them (%L).
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" \
  -v airflow_pw="$AIRFLOW_DB_PASSWORD" -v tentman_pw="$TENTMAN_DB_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE airflow LOGIN PASSWORD %L', :'airflow_pw') \gexec
CREATE DATABASE airflow OWNER airflow;
SELECT format('CREATE ROLE tentman LOGIN PASSWORD %L', :'tentman_pw') \gexec
CREATE DATABASE tentman OWNER tentman;
SQL
