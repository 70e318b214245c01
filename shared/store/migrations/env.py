"""Alembic environment: runs migrations on the connection handed over by upgrade_schema()."""

from alembic import context
from sqlalchemy import create_engine

from shared.store.models import Base

target_metadata = Base.metadata
connection = context.config.attributes.get("connection")

if connection is None:  # plain `alembic` command line: take the URL from alembic.ini / -x
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise RuntimeError("no database URL: pass `-x url=...` or set sqlalchemy.url in alembic.ini")
    with create_engine(url).begin() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
