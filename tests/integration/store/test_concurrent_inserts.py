"""Idempotent inserts under a race: several processes (replicas of the ingestion service, each
with its own store) send overlapping batches of the same new events at once.

Every event must be stored exactly once, and exactly one of the racing calls may report it as
new (the others must see it as a duplicate): that is what lets a client trust ACCEPTED versus
DUPLICATE. On SQLite the store reads which ids exist and then inserts the rest inside one write
transaction, so this also checks that nothing slips in between the read and the insert.

The writers meet at a barrier before every round, and in each round their batches overlap, so
every round is a contended race. (A single start barrier was not enough: SQLite's lock is not
fair, a waiting writer sleeps, and in CI one writer once took every batch before the others woke.)
"""

import contextlib
import multiprocessing as mp
import queue
from multiprocessing.synchronize import Barrier

from shared.store import EventRecord, EventStore, create_store_engine, open_store

WRITERS = 4
EVENTS = 3_000
BATCH = 150
BASE_US = 1_700_000_000_000_000


def events() -> list[EventRecord]:
    return [
        EventRecord(f"race-{n}", f"user-{n % 97}", f"item-{n % 211}", 1 + n % 6, BASE_US + n, "web")
        for n in range(EVENTS)
    ]


def write(url: str, writer: int, ready: Barrier, reported: "mp.Queue[list[str]]") -> None:
    """Every event, in batches that start a third of a batch later per writer (so in each round
    every writer's batch overlaps its neighbours'), with each batch's first event repeated at its
    end."""
    store = EventStore(create_store_engine(url))
    all_events = events()
    shift = writer * (BATCH // 3)
    order = all_events[shift:] + all_events[:shift]
    new: list[str] = []
    for start in range(0, len(order), BATCH):
        batch = order[start : start + BATCH]
        ready.wait(timeout=60)  # all writers start each round together
        new.extend(store.insert_events([*batch, batch[0]], received_at_us=BASE_US).ids)
    store.engine.dispose()
    reported.put(new)


def test_racing_writers_store_each_event_once_and_report_it_new_once(database_url: str) -> None:
    store = open_store(database_url)  # schema in place before the race
    context = mp.get_context("spawn")
    ready, reported = context.Barrier(WRITERS), context.Queue()
    workers = [context.Process(target=write, args=(database_url, n, ready, reported)) for n in range(WRITERS)]
    for worker in workers:
        worker.start()
    new_ids: list[list[str]] = []
    with contextlib.suppress(queue.Empty):  # a writer that failed reports nothing
        while len(new_ids) < WRITERS:
            new_ids.append(reported.get(timeout=60))
    for worker in workers:
        worker.join()
    assert [w.exitcode for w in workers] == [0] * WRITERS

    reported_new = [event_id for ids in new_ids for event_id in ids]
    assert len(reported_new) == EVENTS, "an event was reported new by no writer or by two"
    assert set(reported_new) == {e.event_id for e in events()}
    assert store.count_events() == EVENTS
    store.engine.dispose()
