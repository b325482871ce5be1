"""Every destructive path on PostgreSQL 18 as an owner-only role (NOSUPERUSER NOCREATEDB,
pgvector created once by an admin), with the rehearsals of both strategies on a copy: the story
is ``tests.fixtures.matrix_cell``. A file of its own (PostgreSQL 16's cells are
``tests/test_matrix_e2e.py``) so that ``--dist loadfile`` can run it on the other worker.
"""

from __future__ import annotations

import pytest

from tests.fixtures.matrix_cell import destructive_paths_hold

pytestmark = pytest.mark.e2e


def test_destructive_paths_hold_on_pg18_owner(
    pg_clusters,
    make_database,
    start_letta,
    role_owned_template,
    s3_env,
    s3_bucket,
    monkeypatch,
    prefect_harness,
    capsys,
):
    destructive_paths_hold(
        18,
        "owner",
        pg_clusters,
        make_database,
        start_letta,
        role_owned_template,
        s3_bucket,
        monkeypatch,
        capsys,
    )
