"""Finding 1: an erased shopper's re-sent old events must not come back.

Several processes, each with its own store (as replicas of the ingestion service would have),
re-send the old events of 40 shoppers while another process erases them one by one. Once the
erasures are done, not one event from before an erasure may remain, on one SQLite file as on
PostgreSQL. Nothing here depends on timing: the re-senders keep going until the eraser is done.
"""

import multiprocessing as mp
import time
from multiprocessing.synchronize import Barrier, Event

from shared.store import EventRecord, EventStore, create_store_engine, open_store

USERS = [f"erased-{n}" for n in range(40)]
EVENTS_PER_USER = 5
RESENDERS = 3
DAY_US = 86_400 * 1_000_000


def old_events() -> list[EventRecord]:
    """Each shopper's events, all from days before any erasure."""
    start = time.time_ns() // 1_000 - 10 * DAY_US
    return [
        EventRecord(f"{user}-e{k}", user, f"item-{k}", 1, start + k * 1_000_000, "web")
        for user in USERS
        for k in range(EVENTS_PER_USER)
    ]


def resend(url: str, ready: Barrier, done: Event) -> None:
    """A storefront replaying its queue: every old event, again and again, until erasure ends."""
    store = EventStore(create_store_engine(url))
    events = old_events()
    ready.wait()
    while not done.is_set():
        for start in range(0, len(events), 50):
            store.insert_events(events[start : start + 50], received_at_us=time.time_ns() // 1_000)
    store.engine.dispose()


def erase(url: str, ready: Barrier, done: Event) -> None:
    store = EventStore(create_store_engine(url))
    ready.wait()
    try:
        for user in USERS:
            store.delete_user(user, erased_at_us=time.time_ns() // 1_000)
    finally:
        done.set()
        store.engine.dispose()


def test_resent_events_never_outlive_a_concurrent_erasure(database_url: str) -> None:
    store = open_store(database_url)
    store.insert_events(old_events(), received_at_us=time.time_ns() // 1_000)
    context = mp.get_context("spawn")
    ready, done = context.Barrier(RESENDERS + 1), context.Event()
    workers = [context.Process(target=resend, args=(database_url, ready, done)) for _ in range(RESENDERS)]
    workers.append(context.Process(target=erase, args=(database_url, ready, done)))
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert [w.exitcode for w in workers] == [0] * len(workers)
    back = {user: n for user in USERS if (n := store.count_events(user))}
    store.engine.dispose()
    assert back == {}, f"{len(back)} of {len(USERS)} erased shoppers have {sum(back.values())} old events back"
