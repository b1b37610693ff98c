"""Alembic's environment for flask-bgjobs: run on the connection `Store` hands over.

Online, the connection (already in a transaction, holding the write lock) comes in
``config.attributes["connection"]``; offline (``upgrade-db --sql``), the dialect name comes in
``config.attributes["dialect"]`` and the SQL is written to the configured output buffer.
"""

from __future__ import annotations

from alembic import context

from flask_bgjobs import models

config = context.config
options = {
    "target_metadata": models.metadata,
    "version_table": models.VERSION_TABLE,
    "transactional_ddl": True,
}

if context.is_offline_mode():
    context.configure(
        dialect_name=config.attributes["dialect"],
        literal_binds=True,
        **options,  # type: ignore[arg-type]
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    connection = config.attributes["connection"]
    context.configure(connection=connection, **options)  # type: ignore[arg-type]
    # The caller's transaction: begin_transaction() starts none of its own inside it.
    with context.begin_transaction():
        context.run_migrations()
