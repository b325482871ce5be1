"""Test bed: real PostgreSQL + pgvector, real S3 (moto), real Letta servers, one Prefect harness.

Each kind of component lives in its own fixture module under ``tests/fixtures``.
"""

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.s3",
    "tests.fixtures.letta",
    "tests.fixtures.prefect",
    "tests.fixtures.audit",
    "tests.fixtures.docker_standin",
]
