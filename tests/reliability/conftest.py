"""Fixtures of the reliability suites: a tiny model trained once per session from simulated
shoppers, stores seeded with the same shoppers, and the ledger written to var/bench at the end."""

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.simulator import DAY_US, StorefrontSimulator
from shared.store import EventRecord, ItemRecord, open_store
from tests.reliability.helpers import LEDGER

TINY_MODEL = {"dim": 16, "n_layers": 1, "max_len": 20}


@dataclass
class TinyWorld:
    """Simulated shoppers in a seeded SQLite store, and a model package trained from it."""

    store_file: Path  # a SQLite file to copy, never written by tests
    package: Path  # the trained package (version "v1"), never written by tests
    items: list[ItemRecord]
    events: list[EventRecord]
    users: list[str]

    def seed(self, database_url: str) -> str:
        """Fill an empty store at `database_url` (SQLite or PostgreSQL) with the shoppers."""
        store = open_store(database_url)
        now = time.time_ns() // 1_000
        store.upsert_items(self.items, updated_at_us=now)
        store.insert_events(self.events, received_at_us=now)
        store.engine.dispose()
        return database_url

    def sqlite_copy(self, directory: Path) -> str:
        """A private copy of the seeded SQLite store; returns its URL."""
        target = directory / "world.db"
        shutil.copy(self.store_file, target)
        return f"sqlite:///{target}"


_WORLD: list[TinyWorld] = []  # built once per session, also when another suite imports the fixture


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    pytest.importorskip("torch")
    if _WORLD:
        return _WORLD[0]
    from training.data import load_store
    from training.train import RunOptions
    from training.train import main as train

    root = tmp_path_factory.mktemp("tiny-world")
    simulator = StorefrontSimulator(seed=11, items_per_category=12)
    now = time.time_ns() // 1_000
    shoppers = simulator.population(120, (8, 24), now - 20 * DAY_US, now - DAY_US)
    events = [e for s in shoppers for e in s.events]
    world = TinyWorld(root / "store.db", Path(), simulator.catalogue(), events, [s.user_id for s in shoppers])
    url = world.seed(f"sqlite:///{world.store_file}")
    report = train(data=load_store(url), out=str(root / "models"),
        run=RunOptions(overrides=TINY_MODEL, epochs=1, device="cpu", progress=False, version="v1"))
    world.package = Path(report["package"])
    _WORLD.append(world)
    return world


@pytest.fixture(scope="session", autouse=True)
def reliability_ledger() -> Iterator[None]:
    """Writes var/bench/fuzz.json and var/bench/reliability.json once the session ends."""
    yield
    LEDGER.write()
    if LEDGER.fuzz_requests:
        print(f"\nreliability: {sum(LEDGER.fuzz_requests.values())} fuzzed requests "
              f"{dict(LEDGER.fuzz_requests)}; codes {dict(LEDGER.fuzz_codes)}")
