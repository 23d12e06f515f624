"""Alembic's script directory for the store. A revision is written by hand beside the others (one file
under versions/, `down_revision` naming the one before); the app runs them at start (gateway.store.migrate)."""
