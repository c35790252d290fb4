#!/usr/bin/env bash
# Prints config/.env.example with every empty secret filled with a new random one (32 hex digits; the
# Airflow Fernet key in its own format) and the git identity from `git config`, if set:
#   docker/new-env.sh > config/.env && chmod 600 config/.env && ln -sf config/.env .env
set -euo pipefail
cd "$(dirname "$0")/.."
name=$(git config user.name 2>/dev/null || true)
email=$(git config user.email 2>/dev/null || true)
while IFS= read -r line; do
    case $line in
        GIT_CONFIG_USER_NAME=) echo "GIT_CONFIG_USER_NAME=$name" ;;
        GIT_CONFIG_EMAIL=) echo "GIT_CONFIG_EMAIL=$email" ;;
        AIRFLOW_FERNET_KEY=) echo "AIRFLOW_FERNET_KEY=$(head -c 32 /dev/urandom | base64 | tr '+/' '-_')" ;;
        [A-Z]*=) echo "$line$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" ;;
        *) echo "$line" ;;
    esac
done <config/.env.example
