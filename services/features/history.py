"""The feature core: validated reads of histories and items, straight from the store (no cache,
so an event acknowledged by ingestion is in the very next read). No gRPC here."""

import time
from collections.abc import Sequence
from dataclasses import dataclass

from shared.errors import InvalidArgument
from shared.store import EventStore, ItemRecord
from shared.store.store import HistoryEntry, HistorySteps
from shared.validation import id_problem

MAX_HISTORY = 10_000
MAX_ITEM_IDS = 10_000


@dataclass(frozen=True)
class History:
    user_id: str
    entries: list[HistoryEntry]
    read_at_us: int  # every event acknowledged before this instant is in `entries`


@dataclass(frozen=True)
class Steps:
    user_id: str
    steps: HistorySteps
    read_at_us: int  # every event acknowledged before this instant is in `steps`


class FeatureReader:
    def __init__(self, store: EventStore, default_limit: int) -> None:
        self.store = store
        self.default_limit = default_limit

    def history(self, user_id: str, limit: int) -> History:
        """The user's most recent events with every stored field and their items' attributes."""
        self._check(user_id, limit)
        # Taken before the query: ingestion acknowledges only after commit, so anything
        # acknowledged before this instant is visible to the query that follows.
        read_at_us = time.time_ns() // 1_000
        entries = self.store.recent_history(user_id, limit or self.default_limit)
        return History(user_id, entries, read_at_us)

    def steps(self, user_id: str, limit: int) -> Steps:
        """The same events as `history`, as the columns a model reads (the serving path)."""
        self._check(user_id, limit)
        read_at_us = time.time_ns() // 1_000  # before the query, as in `history`
        return Steps(user_id, self.store.recent_steps(user_id, limit or self.default_limit), read_at_us)

    @staticmethod
    def _check(user_id: str, limit: int) -> None:
        violations = []
        problem = id_problem(user_id)
        if problem:
            violations.append(("user_id", problem))
        if not 0 <= limit <= MAX_HISTORY:
            violations.append(("limit", f"must be within 0..{MAX_HISTORY} (got {limit})"))
        if violations:
            raise InvalidArgument(violations)

    def items(self, item_ids: Sequence[str]) -> tuple[list[ItemRecord], list[str]]:
        """(found items in request order, missing ids)."""
        if not item_ids:
            raise InvalidArgument([("item_ids", "must contain at least one id")])
        if len(item_ids) > MAX_ITEM_IDS:
            raise InvalidArgument(
                [("item_ids", f"{len(item_ids)} ids exceed the maximum {MAX_ITEM_IDS}")]
            )
        violations = [
            (f"item_ids[{i}]", problem)
            for i, item_id in enumerate(item_ids)
            if (problem := id_problem(item_id))
        ]
        if violations:
            raise InvalidArgument(violations)
        found = self.store.get_items(item_ids)
        return (
            [found[i] for i in item_ids if i in found],
            [i for i in item_ids if i not in found],
        )
