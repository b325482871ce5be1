"""Running pinned Letta versions: installs and processes, Docker Compose, alembic."""
