"""SQLite: the database of a pip-installed Letta server (before 0.12)."""
