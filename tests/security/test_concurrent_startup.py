"""Finding 2: processes starting together on one fresh database all come up. Each migrates
the schema at start-up; they must take turns (the README starts three services at once)."""

import multiprocessing as mp
from multiprocessing.synchronize import Barrier

from sqlalchemy import inspect

from shared.store import create_store_engine, open_store
from shared.store.db import current_revision

PROCESSES = 6


def start(url: str, ready: Barrier) -> None:
    """What a server does at start-up: open the store, migrating it to the latest schema."""
    ready.wait()
    open_store(url).engine.dispose()


def test_many_processes_migrate_one_fresh_database_at_once(database_url: str) -> None:
    context = mp.get_context("spawn")
    ready = context.Barrier(PROCESSES)
    workers = [context.Process(target=start, args=(database_url, ready)) for _ in range(PROCESSES)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert [w.exitcode for w in workers] == [0] * PROCESSES
    engine = create_store_engine(database_url)
    assert current_revision(engine) is not None
    assert {"events", "items", "erasures"} <= set(inspect(engine).get_table_names())
    engine.dispose()
