"""The real datasets through IngestionService: exact row counts, and re-import is a no-op."""

from collections import Counter

import pytest

from app.importer import import_records
from services.ingestion.server import build_server
from shared.datasets import read_s3rec, read_taobao, s3rec_events, s3rec_items
from shared.settings import Settings
from shared.store import EventStore, create_store_engine
from tests.conftest import require_datasets


@pytest.fixture
def ingestion_target(serve_in_process, sqlite_url):
    server = serve_in_process(lambda: build_server(Settings(database_url=sqlite_url), port=0))
    store = EventStore(create_store_engine(sqlite_url))
    yield f"127.0.0.1:{server.port}", store
    store.engine.dispose()


def test_beauty_import_stores_every_interaction_once(ingestion_target) -> None:
    target, store = ingestion_target
    domain = read_s3rec(require_datasets() / "amazon", "Beauty")
    expected = sum(len(s) for s in domain.sequences.values())
    first = import_records(target, s3rec_events(domain), s3rec_items(domain), progress=False)
    assert (first.accepted, first.duplicates, first.rejected) == (expected, 0, 0)
    assert store.count_events() == expected == 198_502
    assert store.count_items() == len(domain.item_names)
    second = import_records(target, s3rec_events(domain), s3rec_items(domain), progress=False)
    assert (second.accepted, second.duplicates) == (0, expected)
    assert store.count_events() == expected
    # Order of a user's history is the dataset's order, with real ASINs as item ids.
    user, items = next(iter(domain.sequences.items()))
    history = store.recent_history(domain.user_names[user], 1000)
    assert [h.event.item_id for h in history] == [domain.item_names[i] for i in items]
    assert all(h.category.startswith("attr:") for h in history)


def test_holdout_leaves_out_each_users_last_interactions(ingestion_target) -> None:
    target, store = ingestion_target
    domain = read_s3rec(require_datasets() / "amazon", "Beauty")
    some_users = dict(list(domain.sequences.items())[:300])
    domain.sequences = some_users
    report = import_records(target, s3rec_events(domain, holdout_last=1), progress=False)
    assert report.accepted == sum(len(s) - 1 for s in some_users.values())
    user, items = next(iter(some_users.items()))
    history = store.recent_history(domain.user_names[user], 1000)
    assert [h.event.item_id for h in history] == [domain.item_names[i] for i in items[:-1]]


def test_taobao_import_maps_behaviours_and_categories(ingestion_target) -> None:
    target, store = ingestion_target
    data = read_taobao(require_datasets() / "taobao" / "UserBehavior_head.csv")
    with open(require_datasets() / "taobao" / "UserBehavior_head.csv") as f:
        rows = [line.strip().split(",") for line in f if line.strip() and not line.startswith("user_id")]
    assert len(data.events) == len(rows)
    report = import_records(target, data.events, data.items, progress=False)
    # Every row is a valid event (the 53 outside the documented window are still 2017).
    assert (report.accepted, report.rejected) == (len(rows), 0)
    assert store.count_events() == len(rows)
    stored_types = Counter(e.event_type for e, _ in store.iter_events())
    behaviours = Counter(r[3] for r in rows)
    mapping = {"pv": 1, "cart": 3, "fav": 5, "buy": 4}  # view, add-to-cart, favourite, purchase
    assert stored_types == Counter({mapping[b]: n for b, n in behaviours.items()})
    assert store.get_items([rows[0][1]])[rows[0][1]].category == f"cat:{rows[0][2]}"
    again = import_records(target, data.events, data.items, progress=False)
    assert (again.accepted, again.duplicates) == (0, len(rows))


def test_synthetic_storefront_through_the_cli(ingestion_target, capsys) -> None:
    from app.cli import main as cli

    target, store = ingestion_target
    args = ["import", "synthetic", "--target", target, "--items", "400", "--events", "3000",
            "--categories", "12", "--seed", "2", "--quiet"]
    assert cli(args) == 0
    assert store.count_events() == 3000 and store.count_items() == 400
    history = store.recent_history("u0", 1000)
    assert history and all(h.category.startswith("c") for h in history)
    assert cli(args) == 0  # the same seed again: every event a duplicate
    assert store.count_events() == 3000
    assert "duplicates" in capsys.readouterr().out
