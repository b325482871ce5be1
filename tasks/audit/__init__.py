"""The audit history: its database, migrations, redaction and what is read back from it."""
