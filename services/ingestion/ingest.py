"""The ingestion core: validation and idempotent storage of events and items. No gRPC here."""

import enum
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from shared.errors import InvalidArgument
from shared.model_package import N_EVENT_TYPES
from shared.store import EventRecord, EventStore, ItemRecord
from shared.store.store import Inserted
from shared.validation import id_problem, number_problem, text_problem

VALID_EVENT_TYPES = range(1, N_EVENT_TYPES)  # shiftrec.v1.EventType VIEW .. REVIEW
EARLIEST_US = 631_152_000_000_000  # 1990-01-01T00:00:00Z
FUTURE_SLACK_US = 5 * 60 * 1_000_000  # clocks of storefronts may run a little ahead
MAX_TITLE_LENGTH = 2_000
MAX_TAGS = 64
ERASED_REASON = "user_id: erased by DeleteUser after this event occurred; not stored again"


class Outcome(enum.IntEnum):
    """What happened to one event; values match shiftrec.v1.EventStatus."""

    ACCEPTED = 1
    DUPLICATE = 2
    REJECTED = 3


class IncomingEvent(NamedTuple):
    """An event as received, before validation; `occurred_at_us` is None when missing.

    Named tuples here and in EventResult: one of each per event, and a frozen dataclass's
    constructor cost ~1.8 µs against ~0.4 µs."""

    event_id: str
    user_id: str
    item_id: str
    event_type: int
    occurred_at_us: int | None
    occurred_at_nanos_valid: bool = True
    platform: str = ""
    value: float | None = None


class EventResult(NamedTuple):
    event_id: str
    outcome: Outcome
    reason: str = ""


def _now_us() -> int:
    return time.time_ns() // 1_000


def event_problems(event: IncomingEvent, now_us: int) -> list[str]:
    """Every problem of one event, each naming its field."""
    problems = []
    for field in ("event_id", "user_id", "item_id"):
        problem = id_problem(getattr(event, field))
        if problem:
            problems.append(f"{field}: {problem}")
    if event.event_type == 0:
        problems.append("type: must not be EVENT_TYPE_UNSPECIFIED")
    elif event.event_type not in VALID_EVENT_TYPES:
        problems.append(f"type: unknown event type {event.event_type}")
    if event.occurred_at_us is None:
        problems.append("occurred_at: missing")
    elif not event.occurred_at_nanos_valid:
        problems.append("occurred_at: nanos must be within 0..999999999")
    elif event.occurred_at_us < EARLIEST_US:
        problems.append("occurred_at: before 1990-01-01")
    elif event.occurred_at_us > now_us + FUTURE_SLACK_US:
        problems.append("occurred_at: more than 5 minutes in the future")
    problem = id_problem(event.platform, required=False)
    if problem:
        problems.append(f"platform: {problem}")
    if event.value is not None:
        problem = number_problem(event.value)
        if problem:
            problems.append(f"value: {problem}")
    return problems


def item_problems(item: ItemRecord) -> list[tuple[str, str]]:
    """Every (field, problem) of one item."""
    checks = [
        ("item_id", id_problem(item.item_id)),
        ("title", text_problem(item.title, MAX_TITLE_LENGTH)),
        ("category", id_problem(item.category, required=False)),
        ("brand", id_problem(item.brand, required=False)),
        ("price", number_problem(item.price, minimum=0.0)),
    ]
    if len(item.tags) > MAX_TAGS:
        checks.append(("tags", f"at most {MAX_TAGS} tags (got {len(item.tags)})"))
    for i, tag in enumerate(item.tags):
        checks.append((f"tags[{i}]", id_problem(tag)))
    return [(field, problem) for field, problem in checks if problem]


class Ingestor:
    """Validates and stores batches of events and items."""

    def __init__(
        self, store: EventStore, max_batch_size: int, clock: Callable[[], int] = _now_us
    ) -> None:
        self.store = store
        self.max_batch_size = max_batch_size
        self.clock = clock

    def _check_batch_size(self, field: str, size: int) -> None:
        if size == 0:
            raise InvalidArgument([(field, "must contain at least one entry")])
        if size > self.max_batch_size:
            raise InvalidArgument(
                [(field, f"{size} entries exceed the maximum batch size {self.max_batch_size}")]
            )

    def ingest_events(self, events: Sequence[IncomingEvent]) -> list[EventResult]:
        """Validate the batch and store its valid events in one transaction.

        Results come in request order. An event id repeated within the batch is stored once;
        its later copies are duplicates. A database failure raises Unavailable and stores nothing.
        """
        self._check_batch_size("events", len(events))
        now_us = self.clock()
        results: list[EventResult | None] = []
        valid: dict[str, EventRecord] = {}
        for event in events:
            problems = event_problems(event, now_us)
            if problems:
                results.append(EventResult(event.event_id, Outcome.REJECTED, "; ".join(problems)))
            elif event.event_id in valid:
                results.append(EventResult(event.event_id, Outcome.DUPLICATE))
            else:
                assert event.occurred_at_us is not None  # event_problems reports a missing time
                valid[event.event_id] = EventRecord(
                    event.event_id,
                    event.user_id,
                    event.item_id,
                    event.event_type,
                    event.occurred_at_us,
                    event.platform,
                    event.value,
                )
                results.append(None)  # decided once the store has answered
        stored = self.store.insert_events(list(valid.values()), received_at_us=now_us)
        return [result or self._stored_outcome(event.event_id, stored) for event, result in zip(events, results, strict=True)]

    @staticmethod
    def _stored_outcome(event_id: str, stored: Inserted) -> EventResult:
        if event_id in stored.erased:
            return EventResult(event_id, Outcome.REJECTED, ERASED_REASON)
        return EventResult(event_id, Outcome.ACCEPTED if event_id in stored.ids else Outcome.DUPLICATE)

    def upsert_items(self, items: Sequence[ItemRecord]) -> int:
        """Validate every item, then write them all, or none if any is invalid."""
        self._check_batch_size("items", len(items))
        violations = [
            (f"items[{i}].{field}", problem)
            for i, item in enumerate(items)
            for field, problem in item_problems(item)
        ]
        if violations:
            raise InvalidArgument(violations)
        return self.store.upsert_items(items, updated_at_us=self.clock())

    def delete_user(self, user_id: str) -> int:
        """Erase every event of the user."""
        problem = id_problem(user_id)
        if problem:
            raise InvalidArgument([("user_id", problem)])
        return self.store.delete_user(user_id, erased_at_us=self.clock())
