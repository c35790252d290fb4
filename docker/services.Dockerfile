# PostgreSQL and Redis for the team stack (docker-compose.yml: services `postgres` and `redis`), from
# Debian's packages on the project's BASE_IMAGE: no registry image is needed (see docker/base-image.sh).
# Build context: docker/. Both servers run as the unprivileged user `postgres`; docker/postgres.sh
# and docker/redis.sh start them with the passwords of config/.env.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# a TLS-intercepting proxy's CA, as in the project's Dockerfile (docker/certs/*.crt, none by default)
COPY certs/ /usr/local/share/ca-certificates/extra/
RUN update-ca-certificates >/dev/null

# create_main_cluster = false: the package would initialise a cluster in the image; docker/postgres.sh
# initialises one on the volume instead, at the first start.
RUN mkdir -p /etc/postgresql-common/createcluster.d \
    && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/no-main-cluster.conf \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/lib/redis-data \
    && chown postgres:postgres /var/lib/postgresql/data /var/lib/redis-data \
    && chmod 700 /var/lib/postgresql/data

COPY postgres.sh redis.sh /usr/local/bin/
RUN chmod 0755 /usr/local/bin/postgres.sh /usr/local/bin/redis.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data/pgdata
USER postgres
