#!/bin/sh
# The compose service `airflow`: this project's Airflow (airflow/start.sh, what `make airflow` runs)
# from the image's Airflow environment, its home on the airflow-home volume. The UI's admin
# password comes from config/.env (AIRFLOW_ADMIN_PASSWORD) instead of a generated file.
set -eu
: "${AIRFLOW_ADMIN_PASSWORD:?set AIRFLOW_ADMIN_PASSWORD in config/.env}"
export PATH="/opt/airflow-venv/bin:$PATH"
mkdir -p "$AIRFLOW_HOME"
python -c 'import json, os; json.dump({"admin": os.environ["AIRFLOW_ADMIN_PASSWORD"]}, open(os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"], "w"))'
chmod 600 "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"
exec airflow/start.sh
