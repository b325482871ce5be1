"""``letta-ops doctor``'s checks and their names."""
