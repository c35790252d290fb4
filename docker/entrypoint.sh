#!/bin/sh
# Every container of the image starts here: the git identity from config/.env (GIT_CONFIG_USER_NAME,
# GIT_CONFIG_EMAIL) for commits made inside (dvc exp, JupyterLab's terminal), then the command.
set -e
if [ -n "${GIT_CONFIG_USER_NAME:-}" ]; then git config --global user.name "$GIT_CONFIG_USER_NAME"; fi
if [ -n "${GIT_CONFIG_EMAIL:-}" ]; then git config --global user.email "$GIT_CONFIG_EMAIL"; fi
exec "$@"
