"""The item-text graph (`training.text.text_neighbours`): each titled item linked to its nearest
titles both ways, weights normalised as the transition graph's, untitled items left alone, and the
approximate index a large catalogue uses finding the same neighbours where they are clear."""

import numpy as np
import pytest

pytest.importorskip("faiss")

from training import text
from training.text import text_neighbours


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def titled_table(n_groups: int = 4, per_group: int = 5, seed: int = 0) -> np.ndarray:
    """Row 0 padding, then groups of near-identical titles (tight clusters on random directions),
    then two untitled items."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_groups, 16))
    rows = np.repeat(centres, per_group, axis=0) + 0.01 * rng.normal(size=(n_groups * per_group, 16))
    return np.concatenate([np.zeros((1, 16)), unit(rows), np.zeros((2, 16))]).astype(np.float32)


def brute_force(table: np.ndarray, k: int) -> dict[tuple[int, int], float]:
    """The definition, item by item: top-k positive cosines, symmetrised by the larger of the two
    directions, over sqrt(degree * degree)."""
    titled = [i for i in range(len(table)) if np.abs(table[i]).sum() > 0]
    found: dict[tuple[int, int], float] = {}
    for i in titled:
        sims = sorted(((float(table[i] @ table[j]), j) for j in titled if j != i), reverse=True)[:k]
        for s, j in sims:
            if s > 0:
                for pair in ((i, j), (j, i)):
                    found[pair] = max(found.get(pair, 0.0), s)
    degree = {i: sum(w for (a, _), w in found.items() if a == i) for i in titled}
    return {(a, b): w / np.sqrt(degree[a] * degree[b]) for (a, b), w in found.items()}


def as_dict(edges: np.ndarray, weights: np.ndarray) -> dict[tuple[int, int], float]:
    return {(int(a), int(b)): float(w) for a, b, w in zip(edges[0], edges[1], weights, strict=True)}


def test_each_titled_item_is_linked_to_its_nearest_titles_both_ways():
    table = titled_table()
    edges, weights = text_neighbours(table, k=3, threads=1)
    got, want = as_dict(edges, weights), brute_force(table, 3)
    assert got.keys() == want.keys()
    np.testing.assert_allclose([got[p] for p in want], [want[p] for p in want], rtol=1e-5)
    assert all((b, a) in got for a, b in got)  # both ways
    group = (edges[0] - 1) // 5
    assert (group == (edges[1] - 1) // 5).all()  # near-identical titles find one another first
    untitled = {0, len(table) - 2, len(table) - 1}
    assert not untitled & set(edges.ravel().tolist())  # padding and untitled items: no edges


def test_the_approximate_index_of_a_large_catalogue_finds_the_same_clear_neighbours(monkeypatch):
    table = titled_table(n_groups=30, per_group=4, seed=1)
    exact = as_dict(*text_neighbours(table, k=3, threads=1))
    monkeypatch.setattr(text, "EXACT_NEIGHBOURS_UP_TO", 0)
    approximate = as_dict(*text_neighbours(table, k=3, threads=1))
    assert approximate.keys() == exact.keys()
    np.testing.assert_allclose([approximate[p] for p in exact], list(exact.values()), rtol=1e-5)


def test_fewer_than_two_titles_give_no_edges_and_a_bad_k_is_refused():
    lone = np.zeros((4, 8), np.float32)
    lone[2, 0] = 1.0
    edges, weights = text_neighbours(lone, k=5, threads=1)
    assert edges.shape == (2, 0) and weights.shape == (0,)
    with pytest.raises(ValueError, match="text neighbours per item must be >= 1"):
        text_neighbours(titled_table(), k=0)
