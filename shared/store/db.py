"""Engine creation (SQLite pragmas, PostgreSQL pool) and schema upgrades through Alembic."""

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, make_url

if TYPE_CHECKING:
    from shared.store.store import EventStore

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
MIGRATION_LOCK_ID = 0x5348_4946_5452  # "SHIFTR": a PostgreSQL advisory lock held while migrating
# Execution option of a connection whose transactions write: on SQLite they start with
# BEGIN IMMEDIATE, taking the database's write lock before their first read, so a
# check-then-write transaction is serialised against every other writer in any process.
WRITE_OPTION = "shiftrec_write"


def create_store_engine(database_url: str, *, pool_size: int = 8) -> Engine:
    """An engine for the event store.

    SQLite runs in WAL mode with synchronous=FULL, so an acknowledged batch survives a crash of
    the process or the machine; readers never block the writer. PostgreSQL connections are
    checked before use, so the pool recovers by itself after the database restarts.
    """
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        lock_file = f"{url.database}.startup-lock" if url.database and url.database != ":memory:" else None

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # Turning a fresh file to WAL needs it to itself, and SQLite answers "database is
            # locked" at once (no busy wait) to processes doing the same: they take turns.
            with _file_lock(lock_file):
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()
            # SQLAlchemy emits BEGIN itself (below) instead of pysqlite's implicit one, which
            # would start only at the first write, after the reads a transaction decides on.
            dbapi_connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            writes = conn.get_execution_options().get(WRITE_OPTION, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")

        return engine
    # Bounded waits: a database that drops packets (rather than refusing) must not hold a
    # worker thread for minutes.
    connect_args = {
        "connect_timeout": 5,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "options": "-c statement_timeout=30000",
    }
    return create_engine(
        url, pool_pre_ping=True, pool_size=pool_size, max_overflow=pool_size, connect_args=connect_args
    )


@contextmanager
def _file_lock(path: str | None) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) across processes; no-op for None."""
    if path is None:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_store(database_url: str, *, pool_size: int = 8, migrate: bool = True) -> "EventStore":
    """An EventStore over a new engine, its schema migrated to head first when `migrate`."""
    from shared.store.store import EventStore

    engine = create_store_engine(database_url, pool_size=pool_size)
    if migrate:
        upgrade_schema(engine)
    return EventStore(engine)


def writer(engine: Engine) -> Engine:
    """`engine`, its transactions marked as writing (BEGIN IMMEDIATE on SQLite)."""
    return engine.execution_options(**{WRITE_OPTION: True})


def upgrade_schema(engine: Engine, revision: str = "head") -> None:
    """Bring the database schema to `revision` (Alembic).

    Processes starting together on one fresh database migrate one at a time, the others then
    find nothing to do: on PostgreSQL under an advisory lock, on SQLite under the write lock
    that BEGIN IMMEDIATE takes before Alembic reads the current revision.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with writer(engine).begin() as connection:
        if engine.dialect.name == "postgresql":
            # Replicas starting together migrate one at a time; the others then find nothing to do.
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at (None when never migrated)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
