#!/bin/bash
# The team stack's PostgreSQL (docker-compose.yml, service `postgres`): one server whose data lives on
# the postgres-data volume, with a database and a user for MLflow (mlflow, and mlflow_auth for its
# users) and one for Airflow (airflow). At every start the users' passwords are set from config/.env,
# so changing one there and restarting is enough. Clients connect with a password (scram-sha-256);
# only this container's own user may connect without one, through the local socket.
set -euo pipefail
: "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD in config/.env}"
: "${AIRFLOW_DB_PASSWORD:?set AIRFLOW_DB_PASSWORD in config/.env}"
: "${PGDATA:?}"
socket=$(mktemp -d)

if [[ ! -s $PGDATA/PG_VERSION ]]; then
    echo "postgres: a new cluster in $PGDATA"
    initdb --pgdata="$PGDATA" --username=postgres --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=peer --auth-host=scram-sha-256 >/dev/null
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
fi

# users, databases and passwords, on a server that only listens on a private socket
pg_ctl --pgdata="$PGDATA" --wait --silent -o "-c listen_addresses='' -k $socket" start
psql_() { psql --host="$socket" --username=postgres --dbname=postgres --quiet --no-psqlrc --set=ON_ERROR_STOP=1 "$@"; }
for spec in "mlflow:MLFLOW_DB_PASSWORD:mlflow mlflow_auth" "airflow:AIRFLOW_DB_PASSWORD:airflow"; do
    IFS=: read -r user var dbs <<<"$spec"
    psql_ --set=user="$user" --set=pw="${!var}" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'user') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'user') \gexec
ALTER ROLE :"user" WITH LOGIN PASSWORD :'pw';
SQL
    for db in $dbs; do
        psql_ --set=user="$user" --set=db="$db" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'user') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
SQL
    done
done
pg_ctl --pgdata="$PGDATA" --wait --silent --mode=fast stop
rmdir "$socket"

echo "postgres: users mlflow and airflow ready; listening on port 5432"
exec postgres -D "$PGDATA" -c listen_addresses='*' -k /tmp
