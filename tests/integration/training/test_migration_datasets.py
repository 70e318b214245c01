"""The migration definitions on the real Amazon files: the two category granularities and the
share of shoppers who move (the figures the interest-migration table is built on)."""

import pytest

from shared.datasets import read_s3rec, s3rec_items
from tests.conftest import require_datasets
from training import migration
from training.data import load_files


# distinct category values, "" (an item with no qualifying attribute) counted as one
@pytest.mark.parametrize(("domain", "coarse", "fine"), [("Beauty", 7, 42), ("Sports_and_Outdoors", 103, 25)])
def test_category_granularities(domain, coarse, fine):
    data = read_s3rec(require_datasets() / "amazon", domain)
    for level, expected in (("coarse", coarse), ("fine", fine)):
        assert len({item.category for item in s3rec_items(data, categories=level)}) == expected
    with pytest.raises(ValueError, match="categories must be one of"):
        s3rec_items(data, categories="medium")


def test_a_move_is_a_category_absent_from_the_last_five_events():
    beauty = load_files(f"s3rec:{require_datasets() / 'amazon' / 'Beauty'}", categories="fine")
    es, moved = migration.move_labels(beauty, "test", 5)
    assert len(moved) == 22_363
    assert moved.mean() == pytest.approx(0.449, abs=0.001)  # "45 % of Beauty shoppers move"
    names = beauty.item_categories
    row = int(moved.argmax())
    recent = {names[i - 1] for i in es.histories[row][-5:]}
    assert names[es.targets[row] - 1] not in recent
