"""Views of a dataset for the transfer experiments: fewer training users, cold-start items,
the data as it was at an earlier time."""

from dataclasses import replace

import numpy as np

from training.data import HOLDOUT_TEST, SequenceData


def sample_train_users(data: SequenceData, fraction: float, seed: int) -> SequenceData:
    """Train on a random `fraction` of the users; every user is still evaluated."""
    rng = np.random.default_rng(seed)
    n = len(data.users)
    chosen = np.zeros(n, dtype=bool)
    chosen[rng.permutation(n)[: max(1, round(fraction * n))]] = True
    return replace(data, train_users=chosen)


def hold_out_items(data: SequenceData, fraction: float, seed: int) -> tuple[SequenceData, np.ndarray]:
    """Remove a random `fraction` of the items from every sequence except as a test target, so
    they never occur in training or validation (cold-start items). Returns the new data and
    the (N + 1,) bool mask of held-out items. The vocabulary keeps them (the catalogue knows
    them), as a storefront knows a product before anyone has bought it."""
    assert data.holdout == HOLDOUT_TEST
    rng = np.random.default_rng(seed)
    held = np.zeros(data.n_items + 1, dtype=bool)
    held[1 + rng.permutation(data.n_items)[: round(fraction * data.n_items)]] = True
    items, types, times = [], [], []
    for seq, ty, tm in zip(data.items, data.types, data.times):
        keep = ~held[seq]
        keep[-1] = True  # the test target stays, held out or not
        items.append(seq[keep])
        types.append(ty[keep])
        times.append(tm[keep])
    return replace(data, items=items, types=types, times=times), held


def events_before(data: SequenceData, cut: int) -> SequenceData:
    """Only the events before unix time `cut` (users left with none are dropped); the split is
    then applied to what remains, as if the data ended at the cut."""
    keep_users, items, types, times = [], [], [], []
    for user, seq, ty, tm in zip(data.users, data.items, data.types, data.times):
        n = int(np.searchsorted(tm, cut, side="left"))
        if n:
            keep_users.append(user)
            items.append(seq[:n])
            types.append(ty[:n])
            times.append(tm[:n])
    return replace(data, users=keep_users, items=items, types=types, times=times, train_users=None)
