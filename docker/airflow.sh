#!/bin/sh
# The team stack's Airflow (docker-compose.yml, services airflow-*): one component per container, all
# from the image's Airflow environment (/opt/airflow-venv) with the CeleryExecutor, PostgreSQL as the
# metadata database and Redis as the broker (their addresses and passwords: config/.env).
#   docker/airflow.sh init                      migrate the metadata database, then exit
#   docker/airflow.sh api-server                UI, REST API and the task execution API, port 8080
#   docker/airflow.sh scheduler | dag-processor | triggerer
#   docker/airflow.sh worker QUEUES CONCURRENCY a Celery worker serving QUEUES (comma-separated); its
#                                               tasks run the project's commands with /opt/venv
# The UI's admin password comes from config/.env (AIRFLOW_ADMIN_PASSWORD).
set -eu
export PATH="/opt/airflow-venv/bin:$PATH"
role=${1:?usage: docker/airflow.sh init|api-server|scheduler|dag-processor|triggerer|worker QUEUES CONCURRENCY}
case $role in
    init)
        airflow db migrate >/dev/null
        echo "airflow: metadata database migrated"
        ;;
    api-server)
        : "${AIRFLOW_ADMIN_PASSWORD:?set AIRFLOW_ADMIN_PASSWORD in config/.env}"
        : "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:?}"
        (umask 077 && python -c 'import json, os; json.dump({"admin": os.environ["AIRFLOW_ADMIN_PASSWORD"]}, open(os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"], "w"))')
        exec airflow api-server --host 0.0.0.0 --port 8080
        ;;
    scheduler | triggerer)
        exec airflow "$role" --skip-serve-logs
        ;;
    dag-processor)
        exec airflow dag-processor
        ;;
    worker)
        exec airflow celery worker --queues "${2:?the queues to serve}" --concurrency "${3:-1}"
        ;;
    *)
        echo "docker/airflow.sh: unknown component '$role'" >&2
        exit 2
        ;;
esac
