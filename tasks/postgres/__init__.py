"""PostgreSQL: connections, TLS, privileges, pg_dump/pg_restore, Letta's schema and rows."""
