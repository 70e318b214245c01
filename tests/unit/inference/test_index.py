"""The retrieval index answers inner-product search through L2 over augmented rows: with every
list probed its order is the exact inner-product order, and rows read back unchanged."""

import faiss
import numpy as np

from shared.retrieval import augment_items, augment_queries, build_index, search_parameters


def skewed_table(n: int = 4_000, d: int = 8, seed: int = 0) -> np.ndarray:
    """Rows whose norms spread over two orders of magnitude, as popularity spreads them."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(n, d)).astype(np.float32)
    return rows * rng.lognormal(0.0, 1.0, size=(n, 1)).astype(np.float32)


def test_augmented_distance_orders_by_inner_product():
    table = skewed_table()
    queries = np.random.default_rng(1).normal(size=(16, table.shape[1])).astype(np.float32)
    rows, q = augment_items(table), augment_queries(queries)
    assert rows.shape == (len(table), table.shape[1] + 1) and q.shape == (16, table.shape[1] + 1)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), np.linalg.norm(rows, axis=1).max(), rtol=1e-5)
    l2 = ((q[:, None, :] - rows[None]) ** 2).sum(-1)
    np.testing.assert_allclose(-2 * (queries @ table.T), l2 - l2[:, :1] - 2 * (queries @ table[:1].T),
                               atol=1e-2)  # the same up to a per-query constant


def test_every_list_probed_gives_the_exact_inner_product_top_k():
    table = skewed_table()
    index = build_index(table)
    assert index.metric_type == faiss.METRIC_L2 and index.d == table.shape[1] + 1
    queries = np.random.default_rng(2).normal(size=(32, table.shape[1])).astype(np.float32)
    _, got = index.search(augment_queries(queries), 20, params=search_parameters(index.nlist))
    want = np.argsort(-(queries @ table.T), axis=1, kind="stable")[:, :20]
    assert np.mean([len(set(g) & set(w)) / 20 for g, w in zip(got, want)]) >= 0.99  # float ties aside
    np.testing.assert_array_equal(index.reconstruct_batch(np.arange(50))[:, :-1], table[:50])
