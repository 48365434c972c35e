#!/usr/bin/env bash
# One-shot init of the compose deployment: Airflow metadata DB, TentMan schema, login passwords.
set -euo pipefail
airflow db migrate
# A new, standalone TentMan database: the application's tables too. Against TentMan's own
# database (the application's tables made by its migrations) drop the flag: docs/schema.md.
tentman db upgrade --with-application-tables
# The pool the organization tasks opted into (TENTMAN_BILLING_POOL): organizations billed at once,
# all runs together. Created before any component schedules a task in it, with the slots of
# TENTMAN_BILLING_POOL_SLOTS (empty: tentman.settings' default).
if [ -n "${TENTMAN_BILLING_POOL:-}" ] && [ "${TENTMAN_BILLING_POOL}" != "default_pool" ]; then
  slots=$(python -c 'from tentman.settings import billing_pool_slots; print(billing_pool_slots())')
  airflow pools set "${TENTMAN_BILLING_POOL}" "${slots}" \
    "TentMan organization billing tasks: organizations billed at once, all runs together"
fi
# The simple auth manager reads passwords from this file; they come from the environment.
python - <<'PY'
import json, os
passwords = {"admin": os.environ["AIRFLOW_ADMIN_PASSWORD"]}
if os.environ.get("AIRFLOW_VIEWER_PASSWORD"):
    passwords["viewer"] = os.environ["AIRFLOW_VIEWER_PASSWORD"]
path = os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path, "w") as fh:
    json.dump(passwords, fh)
os.chmod(path, 0o600)
PY
echo "Airflow and TentMan databases migrated; login users: ${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS}"
