"""Backup sets: manifests, the catalog, authentication, verification, retention, admission."""
