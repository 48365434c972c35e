#!/usr/bin/env bash
# Creates the two databases of the deployment (Airflow metadata, TentMan) with their own roles.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" \
  -v airflow_pw="$AIRFLOW_DB_PASSWORD" -v tentman_pw="$TENTMAN_DB_PASSWORD" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_pw';
CREATE DATABASE airflow OWNER airflow;
CREATE ROLE tentman LOGIN PASSWORD :'tentman_pw';
CREATE DATABASE tentman OWNER tentman;
SQL
