"""Inputs of the parity sample stored in each package's manifest: synthetic sequences, never a
shopper's. A package is copied and kept beyond any erasure, so it must hold no personal data;
the serving side only needs inputs that exercise the model (padding and full windows)."""

import numpy as np

from shared import model_package as pkg

SEED = 20_240_101
BASE_SECONDS = 1_700_000_000  # the model reads time differences only


def synthetic_parity_inputs(n_items: int, max_len: int, rows: int) -> dict[str, np.ndarray]:
    """`rows` left-padded sequences of random known items, lengths from 5 up to max_len."""
    rng = np.random.default_rng(SEED)
    items = np.zeros((rows, max_len), dtype=np.int64)
    types = np.zeros((rows, max_len), dtype=np.int64)
    times = np.zeros((rows, max_len), dtype=np.int64)
    for row, length in enumerate(np.linspace(min(5, max_len), max_len, rows).astype(int)):
        start = max_len - length
        items[row, start:] = rng.integers(1, n_items + 1, length)
        types[row, start:] = rng.integers(1, pkg.N_EVENT_TYPES, length)
        times[row, start:] = BASE_SECONDS + np.cumsum(rng.integers(1, 86_400, length))
    return {pkg.INPUT_ITEM_IDS: items, pkg.INPUT_EVENT_TYPES: types, pkg.INPUT_TIMESTAMPS: times}
