"""Alembic environment: run by vault.migrate with a connection it already holds (and, on PostgreSQL, a lock)."""

from alembic import context

from vault.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
