"""Moving a Letta server's SQLite database into PostgreSQL (``letta-ops move-to-postgres``)."""
