"""Alembic environment: runs on the connection `cloud.storage.migrate` hands over."""

from alembic import context
from sqlalchemy import text

from cloud.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    if connection.dialect.name == "postgresql":
        # Several API processes may start at once: one migrates, the others wait and find head.
        connection.execute(text("SELECT pg_advisory_xact_lock(7700770077)"))
    context.run_migrations()
