# The project's one image: the pipeline (DVC + papermill), MLflow, JupyterLab and Airflow, installed
# from the locks, run by a non-root user. `docker run <image>` runs `dvc repro` on the
# project snapshot baked in; docker-compose.yml mounts a clone over it instead.
# No `# syntax=` line and no image but BASE_IMAGE: it builds with the legacy builder, and where
# no registry is reachable BASE_IMAGE can be a local stand-in (docker/base-image.sh).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# Extra CA certificates: docker/certs/*.crt, none by default; a build behind a TLS-intercepting
# proxy puts the proxy's CA there. Every client in the image then trusts the system bundle
# (pip and requests would otherwise use their own copies; uv reads SSL_CERT_FILE).
COPY docker/certs/ /usr/local/share/ca-certificates/extra/
RUN update-ca-certificates >/dev/null
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

# libgomp1: LightGBM's OpenMP runtime (the wheel links it; slim images lack it).
# git: DVC and the tracking tags read the repository of a mounted clone, and people commit from
# JupyterLab's terminal. safe.directory: a clone mounted from the host may have another owner.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 git \
    && rm -rf /var/lib/apt/lists/* \
    && git config --system --add safe.directory /home/devchange/project

# The user owns the project folder; UID matches the host user who mounts a clone (compose passes it).
ARG UID=1000
RUN useradd --create-home --uid "${UID}" --shell /bin/bash devchange

# The environment: exactly the lock, with the installer version the lock pins. A layer of its own,
# so a change of code does not reinstall it. Compiled to bytecode here: the container's user cannot
# write __pycache__ under /opt/venv, and every process would compile MLflow, pandas, ... from source.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONHASHSEED=0 \
    UV_NO_CACHE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements.lock /tmp/requirements.lock
RUN python -m venv /opt/venv \
    && /opt/venv/bin/python -m pip install --quiet "$(grep -E '^uv==' /tmp/requirements.lock)" \
    && uv pip sync --quiet --compile-bytecode --python /opt/venv/bin/python /tmp/requirements.lock \
    && rm /tmp/requirements.lock

# Airflow's own environment (airflow/requirements.lock: its web and database pins never meet the
# project's lock), for the compose services `airflow-*`; its tasks run the project's commands with
# /opt/venv. Not on PATH: docker/airflow.sh puts it first for those services only. Compiled to
# bytecode for the same reason: each component and each task's process would compile Airflow again.
COPY airflow/requirements.lock /tmp/airflow-requirements.lock
RUN python -m venv --without-pip /opt/airflow-venv \
    && uv pip sync --quiet --compile-bytecode --python /opt/airflow-venv/bin/python /tmp/airflow-requirements.lock \
    && rm /tmp/airflow-requirements.lock

# The project. Installed editable: a clone mounted at the same path runs its own code.
WORKDIR /home/devchange/project
COPY --chown=devchange:devchange . .
RUN uv pip install --quiet --python /opt/venv/bin/python --no-deps -e . \
    && python -m ipykernel install --sys-prefix --name devchange --display-name "Python (devchange)" >/dev/null \
    && rm -rf build devchange.egg-info \
    && install -m 0755 docker/entrypoint.sh /usr/local/bin/devchange-entrypoint \
    && mkdir -p /home/devchange/mlflow /home/devchange/airflow /home/devchange/dvc-remote \
    && chown devchange:devchange /home/devchange/project /home/devchange/mlflow /home/devchange/airflow \
        /home/devchange/dvc-remote

USER devchange
# The snapshot has no .git (.dockerignore): DVC runs it without SCM. A mounted clone brings its
# own .git and .dvc/ (where config.local is git-ignored), and DVC uses git there as usual.
RUN dvc config --local core.no_scm true

ENTRYPOINT ["devchange-entrypoint"]
CMD ["dvc", "repro"]
