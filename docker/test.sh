#!/usr/bin/env bash
# make test-docker: the project's image and compose stack, built and run on a real Docker engine
# (the checks are tests/docker/docker_e2e.py). What a fresh machine lacks, this brings:
#   - no engine running: installs Debian's docker.io if needed, starts dockerd, and stops it by
#     its process id when this script ends, whether the tests passed or not;
#   - no compose: Debian's docker-compose (v1), unless the `docker compose` plugin (v2) is there;
#   - BASE_IMAGE unset: python:3.11-slim if the engine already holds it, otherwise a stand-in built
#     from Debian packages (docker/base-image.sh), kept by the engine for later runs. Nothing here
#     asks a container registry: on machines without one, that would only wait for a timeout.
# Arguments go to pytest. DOCKER_DATA_ROOT: where a dockerd started here keeps its images.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'test-docker: %s\n' "$*"; }
started_pid=""
stop_engine() {
    [[ -n $started_pid ]] || return 0
    say "stopping the engine this run started (pid $started_pid)"
    kill "$started_pid" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$started_pid" 2>/dev/null || return 0; sleep 1; done
    say "dockerd $started_pid did not stop within 60 s; killing it"
    kill -9 "$started_pid" 2>/dev/null || true
}
trap stop_engine EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# what this machine lacks, in one apt-get run: the engine, compose, and debootstrap (small; needed
# unless the engine already holds a base image, which is known only once it runs)
missing=()
if ! command -v docker >/dev/null || { ! command -v dockerd >/dev/null && ! docker info >/dev/null 2>&1; }; then
    missing+=(docker.io)
fi
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
[[ -n ${BASE_IMAGE:-} ]] || command -v debootstrap >/dev/null || missing+=(debootstrap)
if (( ${#missing[@]} )); then
    if [[ $(id -u) != 0 ]]; then
        say "needs the Debian packages ${missing[*]} and is not root: install them, or run as root" >&2
        exit 1
    fi
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# the engine
if docker info >/dev/null 2>&1; then
    say "using the running engine ($(docker version -f '{{.Server.Version}}'))"
else
    if [[ $(id -u) != 0 ]]; then say "no Docker engine answers, and starting one needs root" >&2; exit 1; fi
    data_root=${DOCKER_DATA_ROOT:-/var/lib/docker}
    log=$(mktemp /tmp/devchange-dockerd.XXXXXX.log)
    # niced: containers inherit it, and the machine is shared
    nice -n 15 dockerd --storage-driver=overlay2 --data-root "$data_root" >"$log" 2>&1 &
    started_pid=$!
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        kill -0 "$started_pid" 2>/dev/null || { tail -20 "$log" >&2; say "dockerd exited (log: $log)" >&2; started_pid=""; exit 1; }
        sleep 1
    done
    docker info >/dev/null 2>&1 || { tail -20 "$log" >&2; say "dockerd did not answer within 60 s (log: $log)" >&2; exit 1; }
    say "started dockerd $(docker version -f '{{.Server.Version}}') (pid $started_pid, data in $data_root, log $log)"
fi
# a CLI without buildx cannot build with BuildKit: ask for the legacy builder rather than fail over to it
if ! docker buildx version >/dev/null 2>&1; then export DOCKER_BUILDKIT=0; fi

# compose
if command -v docker-compose >/dev/null; then
    DEVCHANGE_COMPOSE=docker-compose
else
    DEVCHANGE_COMPOSE="docker compose"
fi
export DEVCHANGE_COMPOSE
say "compose: $($DEVCHANGE_COMPOSE version | head -1)"

# the base image
if [[ -z ${BASE_IMAGE:-} ]]; then
    if docker image inspect python:3.11-slim >/dev/null 2>&1; then
        BASE_IMAGE=python:3.11-slim
    else
        BASE_IMAGE=local/python:3.11-slim
        if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
            say "base image $BASE_IMAGE: built by an earlier run"
        else
            start=$SECONDS
            docker/base-image.sh "$BASE_IMAGE"
            say "base image $BASE_IMAGE built in $((SECONDS - start)) s"
        fi
    fi
fi
export BASE_IMAGE
say "base image: $BASE_IMAGE"

# -n 0: one process; the tests share one engine and one compose stack
.venv/bin/python -m pytest -n 0 tests/docker/docker_e2e.py "$@"
