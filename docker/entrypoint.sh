#!/bin/sh
# Every container of the image starts here: the git identity from config/.env (GIT_CONFIG_USER_NAME,
# GIT_CONFIG_EMAIL) for commits made inside (dvc exp, JupyterLab's terminal), then the command.
# DEVCHANGE_DVC_REMOTE (the team stack sets it): the DVC remote `team` at that URL becomes the default
# remote of the project in the working directory, in its .dvc/config.local (never committed), so
# `dvc push` / `dvc pull` in any container move data through it.
set -e
if [ -n "${GIT_CONFIG_USER_NAME:-}" ]; then git config --global user.name "$GIT_CONFIG_USER_NAME"; fi
if [ -n "${GIT_CONFIG_EMAIL:-}" ]; then git config --global user.email "$GIT_CONFIG_EMAIL"; fi
if [ -n "${DEVCHANGE_DVC_REMOTE:-}" ] && [ -w .dvc ] \
    && ! grep -qsF "url = $DEVCHANGE_DVC_REMOTE" .dvc/config.local; then
    dvc remote add --local --force --default team "$DEVCHANGE_DVC_REMOTE" >/dev/null
fi
exec "$@"
