#!/usr/bin/env bash
# Starts this project's Airflow (what `make airflow` runs): the metadata DB migration, then the
# scheduler, the DAG processor, the triggerer and the API server (UI + REST + task execution API)
# on 127.0.0.1. Not `airflow standalone`: it also starts log servers bound to every interface
# (scheduler and triggerer); on one machine the API server reads task logs from airflow/home/logs.
# Expects the AIRFLOW_* variables set by the Makefile. Ctrl-C (or SIGTERM) stops every component.
set -euo pipefail
: "${AIRFLOW_HOME:?set by make airflow}" "${AIRFLOW__API__PORT:?set by make airflow}"

airflow db migrate >/dev/null
pids=()
stop() {
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
}
trap 'trap - EXIT; stop; exit 0' INT TERM  # asked to stop
trap stop EXIT                              # this script failed or a component ended

airflow scheduler --skip-serve-logs & pids+=($!)
airflow dag-processor & pids+=($!)
airflow triggerer --skip-serve-logs & pids+=($!)
airflow api-server --host 127.0.0.1 --port "$AIRFLOW__API__PORT" & pids+=($!)
echo "airflow: scheduler, dag-processor, triggerer and api-server started (pids ${pids[*]}); Ctrl-C stops them"
wait -n "${pids[@]}" || true  # returns when one component ends: stop the others, and fail
echo "airflow: a component exited; stopping the others" >&2
exit 1
