"""The Alembic migrations produce exactly the schema the models declare, on both databases."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from shared.store import create_store_engine, upgrade_schema
from shared.store.db import current_revision
from shared.store.models import Base


def test_migrations_match_models(database_url: str) -> None:
    engine = create_store_engine(database_url)
    assert current_revision(engine) is None
    upgrade_schema(engine)
    upgrade_schema(engine)  # idempotent
    assert current_revision(engine) == "0003"
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    indexes = {ix["name"]: ix["column_names"] for ix in inspect(engine).get_indexes("events")}
    assert indexes["ix_events_user_time"] == ["user_id", "occurred_at_us", "seq"]
    engine.dispose()


def test_sqlite_runs_in_wal_mode(sqlite_url: str) -> None:
    engine = create_store_engine(sqlite_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    engine.dispose()


def test_concurrent_upgrades_serialise(postgres_url: str) -> None:
    """Replicas starting together: every upgrade succeeds, the schema is created once."""
    import threading

    errors: list[BaseException] = []

    def upgrade() -> None:
        engine = create_store_engine(postgres_url)
        try:
            upgrade_schema(engine)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=upgrade) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    engine = create_store_engine(postgres_url)
    assert current_revision(engine) == "0003"
    engine.dispose()


def test_erasures_recorded_before_the_digest_migration_keep_working(database_url: str) -> None:
    """0003 turns stored user ids into digests: the erasure still refuses the old events, and the
    erased shopper's id is nowhere in the table."""
    from sqlalchemy import text

    from shared.store import EventRecord, EventStore
    from shared.store.models import user_digest

    engine = create_store_engine(database_url)
    upgrade_schema(engine, "0002")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO erasures (user_id, erased_at_us) VALUES ('shopper-gone', 2000)"))
    upgrade_schema(engine)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM erasures")).all()
    assert [tuple(r) for r in rows] == [(user_digest("shopper-gone"), 2000)]
    store = EventStore(engine)
    old = EventRecord("e-old", "shopper-gone", "item", 1, 1000, "web")
    new = EventRecord("e-new", "shopper-gone", "item", 1, 3000, "web")
    result = store.insert_events([old, new], received_at_us=4000)
    assert result.ids == {"e-new"} and result.erased == {"e-old"}
    engine.dispose()
