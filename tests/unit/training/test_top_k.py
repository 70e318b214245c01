"""The export's top-k helpers: the partition-based top k equals a full stable sort's, and the
parity comparison tolerates a swap only between tied scores."""

import numpy as np
import pytest

pytest.importorskip("torch")

from training.export import top_k_agree, top_k_columns


def test_top_k_columns_equals_a_full_stable_sort():
    rng = np.random.default_rng(0)
    for width in (3, 10, 57):
        scores = rng.normal(size=(6, width)).astype(np.float32)
        want = np.argsort(-scores, axis=1, kind="stable")[:, :10]
        np.testing.assert_array_equal(top_k_columns(scores, 10), want)
    tied = np.array([[1.0, 3.0, 3.0, 2.0, 3.0]])
    assert top_k_columns(tied, 3).tolist() == [[1, 2, 4]]  # ties by column


def test_top_k_agree_only_across_ties():
    reference = np.array([[5.0, 4.0, 4.0, 1.0]])
    assert top_k_agree(reference, np.array([[5.0, 3.9, 4.0, 1.0]]), k=2, tie=1e-6)  # 1 and 2 tie
    assert not top_k_agree(reference, np.array([[5.0, 4.0, 4.0, 4.5]]), k=2)  # 3 was never close
