"""The scale generator: exact sizes, deterministic by seed, time-ordered shoppers, items from
the shopper's current category, skewed popularity and real interest moves."""

from collections import Counter, defaultdict
from itertools import pairwise

import pytest

from app.scale import ScaleStorefront


@pytest.fixture(scope="module")
def store():
    return ScaleStorefront(items_n=3_000, events_n=40_001, categories_n=30, seed=5, chunk_shoppers=700)


@pytest.fixture(scope="module")
def events(store):
    return list(store.events())


def test_exact_sizes_and_unique_ids(store, events):
    items = store.items()
    assert len(items) == 3_000 and len({i.item_id for i in items}) == 3_000
    assert len(events) == 40_001
    assert len({e.event_id for e in events}) == 40_001
    assert len({e.user_id for e in events}) == store.shoppers == 2_000
    assert {e.item_id for e in events} <= {i.item_id for i in items}


def test_deterministic_by_seed(store, events):
    again = list(ScaleStorefront(items_n=3_000, events_n=40_001, categories_n=30, seed=5, chunk_shoppers=700).events())
    assert again == events
    other = list(ScaleStorefront(items_n=3_000, events_n=40_001, categories_n=30, seed=6).events())
    assert [e.item_id for e in other] != [e.item_id for e in events]


def test_shoppers_in_time_order_with_skew_and_moves(store, events):
    category = {i.item_id: i.category for i in store.items()}
    by_user = defaultdict(list)
    for e in events:
        by_user[e.user_id].append(e)
    assert all(a.occurred_at_us <= b.occurred_at_us for h in by_user.values() for a, b in pairwise(h))
    pairs = [(category[a.item_id], category[b.item_id]) for h in by_user.values() for a, b in pairwise(h)]
    moved = sum(a != b for a, b in pairs) / len(pairs)
    assert 0.1 < moved < 0.3  # move_probability 0.2, less the redraws of the same category
    counts = Counter(e.item_id for e in events)
    top_share = sum(c for _, c in counts.most_common(30)) / len(events)  # the top 1 % of items
    assert top_share > 0.1
    cat_counts = Counter(category[e.item_id] for e in events)
    assert cat_counts.most_common(1)[0][1] > 3 * len(events) / 30  # popular categories dominate
    assert {e.event_type for e in events} == {1, 2, 3, 4}


def test_one_event_per_shopper_and_bad_sizes():
    assert len(list(ScaleStorefront(items_n=5, events_n=7, shoppers_n=7).events())) == 7
    with pytest.raises(ValueError, match="items_n"):
        ScaleStorefront(items_n=0, events_n=1)
