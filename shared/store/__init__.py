"""The SQL event store: schema, engine set-up, use-case methods and Alembic migrations."""

from shared.store.db import create_store_engine, open_store, upgrade_schema
from shared.store.store import EventRecord, EventStore, HistorySteps, ItemRecord

__all__ = ["EventRecord", "EventStore", "HistorySteps", "ItemRecord", "create_store_engine", "open_store", "upgrade_schema"]
