"""A small store of simulated shoppers and a model trained from it, shared by the tests here."""

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.simulator import DAY_US, StorefrontSimulator
from shared.store import open_store

TINY_MODEL = {"dim": 16, "n_layers": 1, "max_len": 20}


@dataclass
class Pipeline:
    database_url: str
    model_dir: Path
    simulator: StorefrontSimulator
    users: list[str]


def train_package(database_url: str, model_dir: Path, epochs: int = 2, version: str | None = None) -> Path:
    """Train the tiny model from the store and publish it into `model_dir`."""
    pytest.importorskip("torch")
    from training.data import load_store
    from training.train import RunOptions, main

    report = main(data=load_store(database_url), out=str(model_dir),
        run=RunOptions(overrides=TINY_MODEL, epochs=epochs, device="cpu", progress=False, version=version))
    return Path(report["package"])


@pytest.fixture(scope="package")  # read-only for every test here: trained once
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    root = tmp_path_factory.mktemp("pipeline")
    url = f"sqlite:///{root / 'store.db'}"
    simulator = StorefrontSimulator(seed=3, items_per_category=20)
    now = time.time_ns() // 1_000
    shoppers = simulator.population(200, (8, 30), now - 20 * DAY_US, now - DAY_US)
    store = open_store(url)
    store.upsert_items(simulator.catalogue(), updated_at_us=now)
    store.insert_events([e for s in shoppers for e in s.events], received_at_us=now)
    store.engine.dispose()
    model_dir = root / "models"
    train_package(url, model_dir, version="v1")
    return Pipeline(url, model_dir, simulator, [s.user_id for s in shoppers])
