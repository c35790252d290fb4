#!/bin/bash
# The team stack's Redis (docker-compose.yml, service `redis`): Airflow's Celery broker, with the
# password of config/.env (REDIS_PASSWORD), read from a private file rather than the command line.
# Its queue persists on the redis-data volume (append-only file): queued tasks survive a restart.
set -euo pipefail
: "${REDIS_PASSWORD:?set REDIS_PASSWORD in config/.env}"
conf=$(mktemp)
chmod 600 "$conf"
printf 'bind 0.0.0.0\nport 6379\nprotected-mode no\nrequirepass "%s"\ndir /var/lib/redis-data\nappendonly yes\n' \
    "$REDIS_PASSWORD" >"$conf"
exec redis-server "$conf"
