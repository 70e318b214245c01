"""Use-case methods over the event store; no gRPC here, plain values in and out."""

import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, Integer, Row, Select, bindparam, delete, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from shared.errors import Unavailable
from shared.store.db import writer
from shared.store.models import ErasureRow, EventRow, ItemRow, user_digest

# Rows per INSERT statement; SQLite allows 32,766 bound parameters, 9 columns each.
_INSERT_CHUNK = 2_000

# Rows one DELETE statement removes: erasing a very large shopper takes several statements
# (in one transaction), each well within the statement timeout.
_DELETE_CHUNK = 10_000

# Erasure vs. re-sent events on PostgreSQL: DeleteUser holds a transaction-level advisory lock
# on the shopper's slot exclusively, a batch holds the slots of its shoppers shared, from before
# it reads the erasures until it commits. Shoppers are hashed into a fixed number of slots, so
# a batch takes a bounded number of locks (the server's lock table is finite) whatever its size.
_ERASURE_LOCK_SPACE = 0x5352  # "SR": the first key of the two-key advisory lock form
_ERASURE_LOCK_SLOTS = 64
_PG_LOCK_SHARED = text(
    "SELECT count(pg_advisory_xact_lock_shared(:space, slot)) FROM unnest(CAST(:slots AS int[])) AS slot"
)
_PG_LOCK_EXCLUSIVE = text("SELECT pg_advisory_xact_lock(:space, :slot)")


def erasure_slot(user_id: str) -> int:
    """The advisory lock slot of a shopper (the same in every process)."""
    return zlib.crc32(user_id.encode()) % _ERASURE_LOCK_SLOTS


_PG_UNNEST_INSERT = text(
    """
    INSERT INTO events (event_id, user_id, item_id, event_type, occurred_at_us, received_at_us,
                        platform, value)
    SELECT * FROM unnest(CAST(:event_id AS text[]), CAST(:user_id AS text[]),
                         CAST(:item_id AS text[]), CAST(:event_type AS smallint[]),
                         CAST(:occurred_at_us AS bigint[]), CAST(:received_at_us AS bigint[]),
                         CAST(:platform AS text[]), CAST(:value AS double precision[]))
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
    """
)


_EVENT_INSERT_COLUMNS = (
    "event_id", "user_id", "item_id", "event_type", "occurred_at_us", "received_at_us", "platform", "value"
)
_SQLITE_INSERT = (
    f"INSERT INTO events ({', '.join(_EVENT_INSERT_COLUMNS)}) VALUES ({', '.join('?' * len(_EVENT_INSERT_COLUMNS))})"
)


class EventRecord(NamedTuple):
    """A validated behaviour event (a named tuple: built per event on the ingest and training
    paths, where a frozen dataclass's constructor cost several times as much)."""

    event_id: str
    user_id: str
    item_id: str
    event_type: int
    occurred_at_us: int
    platform: str = ""
    value: float | None = None


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """A validated catalogue item."""

    item_id: str
    title: str = ""
    category: str = ""
    tags: tuple[str, ...] = ()
    brand: str = ""
    price: float = 0.0


@dataclass(frozen=True, slots=True)
class Inserted:
    """What insert_events did: the ids stored now, and the ids refused because their user was
    erased after the event occurred."""

    ids: set[str]
    erased: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One event of a user's history with its item's catalogue attributes."""

    event: EventRecord
    category: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class HistorySteps:
    """A user's history as parallel columns, oldest first: only what a model reads."""

    item_ids: list[str]
    event_types: list[int]
    occurred_at_us: list[int]
    categories: list[str]  # "" where the item is not in the catalogue


class EventStore:
    """The events and the catalogue, on SQLite or PostgreSQL."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = writer(engine)
        self._dialect = engine.dialect.name
        # SQLite has one writer at a time; serialising writers here avoids lock timeouts.
        self._write_lock = threading.Lock() if self._dialect == "sqlite" else None

    def _insert(self, table: type[EventRow] | type[ItemRow] | type[ErasureRow]) -> postgresql.Insert | sqlite.Insert:
        dialect = sqlite if self._dialect == "sqlite" else postgresql
        return dialect.insert(table)

    def insert_events(self, events: Sequence[EventRecord], received_at_us: int) -> Inserted:
        """Store the events in one transaction; report the ids that were new.

        Ids already stored (or repeated within `events`) are skipped, so re-sending is harmless.
        Events of an erased user that occurred before the erasure are not stored, also when
        DeleteUser runs at the same time in another process: the erasure check and the insert
        are one transaction serialised against delete_user (see _ERASURE_LOCK_SPACE; on SQLite
        the transaction holds the write lock from its start).
        """
        if not events:
            return Inserted(set())
        inserted: set[str] = set()
        with self._writing() as conn:
            if self._dialect == "postgresql":
                slots = sorted({erasure_slot(e.user_id) for e in events})
                conn.execute(_PG_LOCK_SHARED, {"space": _ERASURE_LOCK_SPACE, "slots": slots})
            erased_at = self._erasures(conn, {e.user_id for e in events})
            erased = {e.event_id for e in events if e.occurred_at_us <= erased_at.get(e.user_id, -1)}
            kept = [e for e in events if e.event_id not in erased]
            if not kept:
                return Inserted(inserted, erased)
            if self._dialect == "postgresql":
                # One statement over arrays: ~3x the rate of multi-row VALUES on PostgreSQL.
                columns = zip(*_rows(kept, received_at_us), strict=True)
                arrays = {name: list(values) for name, values in zip(_EVENT_INSERT_COLUMNS, columns, strict=True)}
                inserted.update(conn.execute(_PG_UNNEST_INSERT, arrays).scalars())
                return Inserted(inserted, erased)
            # SQLite: the transaction holds the database's write lock from BEGIN IMMEDIATE, so
            # the ids found here cannot change before the INSERT; a plain executemany of the new
            # rows, positional, through the driver, costs a third less CPU than INSERT … ON
            # CONFLICT … RETURNING through SQLAlchemy (insertmanyvalues, per-row parameter
            # processing), and a row that somehow conflicted would fail the batch, never be
            # miscounted.
            stored = self._stored_ids(conn, [e.event_id for e in kept])
            new: dict[str, EventRecord] = {}
            for e in kept:  # an id repeated within the batch: its first copy is stored
                if e.event_id not in stored:
                    new.setdefault(e.event_id, e)
            if new:
                conn.exec_driver_sql(_SQLITE_INSERT, _rows(new.values(), received_at_us))
            inserted.update(new)
        return Inserted(inserted, erased)

    @staticmethod
    def _stored_ids(conn: Connection, event_ids: list[str]) -> set[str]:
        """Which of `event_ids` are already stored (SQLite)."""
        found: set[str] = set()
        for start in range(0, len(event_ids), _INSERT_CHUNK):
            chunk = tuple(event_ids[start : start + _INSERT_CHUNK])
            query = f"SELECT event_id FROM events WHERE event_id IN ({', '.join('?' * len(chunk))})"
            found.update(row[0] for row in conn.exec_driver_sql(query, chunk))
        return found

    def _erasures(self, conn: Connection, users: set[str]) -> dict[str, int]:
        """When each of `users` was erased (only those that were; erasures are kept by digest)."""
        by_digest = {user_digest(u): u for u in users}
        found: dict[str, int] = {}
        ordered = sorted(by_digest)
        for start in range(0, len(ordered), _INSERT_CHUNK):
            chunk = ordered[start : start + _INSERT_CHUNK]
            query = select(ErasureRow.user_digest, ErasureRow.erased_at_us).where(ErasureRow.user_digest.in_(chunk))
            found.update({by_digest[row.user_digest]: row.erased_at_us for row in conn.execute(query)})
        return found

    def upsert_items(self, items: Sequence[ItemRecord], updated_at_us: int) -> int:
        """Insert or replace the items in one transaction; return how many were written."""
        if not items:
            return 0
        latest = {i.item_id: i for i in items}  # the last version of a repeated id wins
        rows = [
            {
                "item_id": i.item_id,
                "title": i.title,
                "category": i.category,
                "tags": list(i.tags),
                "brand": i.brand,
                "price": i.price,
                "updated_at_us": updated_at_us,
            }
            for i in latest.values()
        ]
        stmt = self._insert(ItemRow)
        stmt = stmt.on_conflict_do_update(
            index_elements=["item_id"],
            set_={c: stmt.excluded[c] for c in rows[0] if c != "item_id"},
        )
        with self._writing() as conn:
            for start in range(0, len(rows), _INSERT_CHUNK):
                conn.execute(stmt, rows[start : start + _INSERT_CHUNK])
        return len(rows)

    def delete_user(self, user_id: str, erased_at_us: int) -> int:
        """Erase every event of the user and remember the erasure (events that occurred before
        `erased_at_us` are refused from now on); return how many events were erased.

        One transaction, excluding concurrent insert_events of this user until it commits; the
        events go in chunks of _DELETE_CHUNK rows, so no statement runs into the timeout."""
        stmt = self._insert(ErasureRow).values(user_digest=user_digest(user_id), erased_at_us=erased_at_us)
        stmt = stmt.on_conflict_do_update(
            index_elements=["user_digest"], set_={"erased_at_us": stmt.excluded.erased_at_us}
        )
        chunk = select(EventRow.seq).where(EventRow.user_id == user_id).limit(_DELETE_CHUNK)
        erased = 0
        with self._writing() as conn:
            if self._dialect == "postgresql":
                conn.execute(_PG_LOCK_EXCLUSIVE, {"space": _ERASURE_LOCK_SPACE, "slot": erasure_slot(user_id)})
            conn.execute(stmt)
            while True:
                deleted = int(conn.execute(delete(EventRow).where(EventRow.seq.in_(chunk))).rowcount or 0)
                erased += deleted
                if deleted < _DELETE_CHUNK:
                    return erased

    def recent_history(self, user_id: str, limit: int) -> list[HistoryEntry]:
        """The user's `limit` most recent events, oldest first, joined with their items."""
        with self._reading() as conn:
            rows = conn.execute(_NEWEST_EVENTS, {"user_id": user_id, "limit": limit}).all()
        return [
            HistoryEntry(_record(row), row.category or "", tuple(row.tags or ())) for row in reversed(rows)
        ]

    def recent_steps(self, user_id: str, limit: int) -> HistorySteps:
        """The same events as `recent_history`, as columns of what a model reads.

        Several times cheaper per event (four columns, no tags to decode, no record objects),
        which is what bounds the serving path when histories are long."""
        with self._reading() as conn:
            rows = conn.execute(_NEWEST_STEPS, {"user_id": user_id, "limit": limit}).all()
        if not rows:
            return HistorySteps([], [], [], [])
        items, types, times, categories = zip(*reversed(rows), strict=True)
        return HistorySteps(list(items), list(types), list(times), [c or "" for c in categories])

    def get_items(self, item_ids: Sequence[str]) -> dict[str, ItemRecord]:
        """The catalogue items among `item_ids`, by id."""
        found: dict[str, ItemRecord] = {}
        unique = list(dict.fromkeys(item_ids))
        with self._reading() as conn:
            for start in range(0, len(unique), _INSERT_CHUNK):
                chunk = unique[start : start + _INSERT_CHUNK]
                for row in conn.execute(select(*_ITEM_COLUMNS).where(ItemRow.item_id.in_(chunk))):
                    found[row.item_id] = _item(row)
        return found

    def iter_events(self, batch_size: int = 50_000) -> Iterator[tuple[EventRecord, int]]:
        """Every stored event as (record, seq), per user oldest first (for training)."""
        query = select(*_EVENT_COLUMNS).order_by(
            EventRow.user_id, EventRow.occurred_at_us, EventRow.seq
        )
        with self._reading() as conn:
            for row in conn.execution_options(yield_per=batch_size).execute(query):
                yield _record(row), row.seq

    def all_items(self) -> list[ItemRecord]:
        """The whole catalogue."""
        with self._reading() as conn:
            rows = conn.execute(select(*_ITEM_COLUMNS).order_by(ItemRow.item_id)).all()
        return [_item(row) for row in rows]

    def count_events(self, user_id: str | None = None) -> int:
        """How many events are stored (for one user when given)."""
        query = select(func.count()).select_from(EventRow)
        if user_id is not None:
            query = query.where(EventRow.user_id == user_id)
        with self._reading() as conn:
            return int(conn.execute(query).scalar_one())

    def count_items(self) -> int:
        """How many catalogue items are stored."""
        with self._reading() as conn:
            return int(conn.execute(select(func.count()).select_from(ItemRow)).scalar_one())

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A write transaction (BEGIN IMMEDIATE on SQLite, after this process's writer lock);
        connection failures are reported as Unavailable."""
        with self._write_lock or nullcontext(), _unavailable_on_disconnect(), self._writer.begin() as conn:
            yield conn

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        with _unavailable_on_disconnect(), self.engine.connect() as conn:
            yield conn


_EVENT_COLUMNS = [c for c in EventRow.__table__.c if c.name != "received_at_us"]
_ITEM_COLUMNS = [c for c in ItemRow.__table__.c if c.name != "updated_at_us"]


def _newest(*columns: Any) -> Select[Any]:
    """A user's (`:user_id`) `:limit` most recent events (newest first, by time then arrival),
    with their items' columns joined where the item is in the catalogue.

    Built once, bound per call: building the expression cost a third of a history read."""
    return (
        select(*columns)
        .outerjoin(ItemRow, ItemRow.item_id == EventRow.item_id)
        .where(EventRow.user_id == bindparam("user_id"))
        .order_by(EventRow.occurred_at_us.desc(), EventRow.seq.desc())
        .limit(bindparam("limit", type_=Integer))
    )


_NEWEST_EVENTS = _newest(*_EVENT_COLUMNS, ItemRow.category, ItemRow.tags)
_NEWEST_STEPS = _newest(EventRow.item_id, EventRow.event_type, EventRow.occurred_at_us, ItemRow.category)


def _rows(events: Iterable[EventRecord], received_at_us: int) -> list[tuple[Any, ...]]:
    """Events as rows in the order of _EVENT_INSERT_COLUMNS."""
    return [
        (e.event_id, e.user_id, e.item_id, e.event_type, e.occurred_at_us, received_at_us, e.platform, e.value)
        for e in events
    ]


def _record(row: Row) -> EventRecord:
    return EventRecord(
        row.event_id, row.user_id, row.item_id, row.event_type, row.occurred_at_us, row.platform, row.value
    )


def _item(row: Row) -> ItemRecord:
    return ItemRecord(row.item_id, row.title, row.category, tuple(row.tags or ()), row.brand, row.price)


@contextmanager
def _unavailable_on_disconnect() -> Iterator[None]:
    """Connection-level database failures (refused, lost, locked) are retryable: Unavailable."""
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        raise Unavailable(f"database unavailable: {type(exc.orig).__name__}") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise Unavailable(f"database connection lost: {type(exc.orig).__name__}") from exc
        raise
