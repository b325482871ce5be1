"""Every destructive path on PostgreSQL 16, as a superuser and as an owner-only role
(NOSUPERUSER NOCREATEDB, pgvector created once by an admin, as on RDS, Cloud SQL, Azure or
Supabase): the story is ``tests.fixtures.matrix_cell``. PostgreSQL 18 as an owner-only role is
``tests/test_matrix_pg18_e2e.py`` (a file of its own, so that ``--dist loadfile`` runs it on the
other worker); PostgreSQL 18 as a superuser is the other e2e files' cell.

The two cells share this worker's PostgreSQL 16 cluster and one migrated template database.
"""

from __future__ import annotations

import pytest

from tests.fixtures.matrix_cell import destructive_paths_hold

pytestmark = pytest.mark.e2e

CELLS = [(16, "superuser"), (16, "owner")]


@pytest.mark.parametrize("major,role", CELLS, ids=[f"pg{m}-{r}" for m, r in CELLS])
def test_destructive_paths_hold_on_cell(
    major,
    role,
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
        major,
        role,
        pg_clusters,
        make_database,
        start_letta,
        role_owned_template,
        s3_bucket,
        monkeypatch,
        capsys,
    )
