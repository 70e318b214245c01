"""The retrieval path's candidate merge: the step prior's columns first, then the index's, each
column once, real columns only, a fixed width."""

import numpy as np
import pytest

pytest.importorskip("faiss")

from shared.retrieval import merge_columns


def reference(first: list[int], rest: list[int], width: int) -> list[int]:
    out: list[int] = []
    for c in first + rest:
        if c >= 0 and c not in out:
            out.append(c)
    return (out + [-1] * width)[:width]


def test_first_columns_lead_and_duplicates_and_padding_drop():
    first = np.array([[7, -1, 3, 7], [-1, -1, -1, -1], [2, 1, 0, 5]])
    rest = np.array([[3, 9, 8, 1, 4], [6, 6, 5, -1, -1], [0, 1, 2, 3, 4]])
    got = merge_columns(first, rest, 6)
    np.testing.assert_array_equal(got, [[7, 3, 9, 8, 1, 4],  # 7 once, 3 where the prior put it
                                        [6, 5, -1, -1, -1, -1],  # fewer real columns than the width
                                        [2, 1, 0, 5, 3, 4]])


def test_random_rows_match_a_plain_loop():
    rng = np.random.default_rng(0)
    for width in (1, 5, 12, 30):
        first = rng.integers(-1, 15, (50, 8))
        rest = rng.integers(-1, 15, (50, 12))
        got = merge_columns(first, rest, width)
        want = [reference(f.tolist(), r.tolist(), width) for f, r in zip(first, rest)]
        np.testing.assert_array_equal(got, want)
