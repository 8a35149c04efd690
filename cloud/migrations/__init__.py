"""Alembic migrations of the directory's schema (run by `cloud.storage.migrate`)."""
