"""
Alembic environment: migrations run on the connection trackport hands over
(see L{gateway.store.migrate}), never on a URL of their own.
"""

from alembic import context

from gateway.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
