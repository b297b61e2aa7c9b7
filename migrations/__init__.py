"""Alembic migrations of the unlearnd schema (the only way it changes)."""
