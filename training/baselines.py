"""Non-learned baselines scored in the same harness and on the same training events as the
model: most-popular, recent-popular (the last 30 days of the data) and item-to-item
co-occurrence on the user's last item. Ties fall back to all-time popularity."""

import numpy as np

from training.data import Inputs, SequenceData

DAY_S = 86_400


def _training_events(data: SequenceData) -> tuple[np.ndarray, np.ndarray]:
    """Item indices and times of every training event (before each user's validation target)."""
    items = [data.items[u][: data.train_end(u)] for u in range(len(data.users))]
    times = [data.times[u][: data.train_end(u)] for u in range(len(data.users))]
    return np.concatenate(items), np.concatenate(times)


def _popularity(data: SequenceData) -> np.ndarray:
    items, _ = _training_events(data)
    return np.bincount(items, minlength=data.n_items + 1)[1:].astype(np.float64)  # (N,)


class MostPopular:
    def __init__(self, data: SequenceData) -> None:
        counts = _popularity(data)
        self.scores = counts  # (N,)

    def __call__(self, inputs: Inputs) -> np.ndarray:
        return np.broadcast_to(self.scores, (len(inputs.items), len(self.scores))).copy()


class RecentPopular(MostPopular):
    """Counts over the last `days` of the training data; all-time counts break ties."""

    def __init__(self, data: SequenceData, days: int = 30) -> None:
        items, times = _training_events(data)
        recent = items[times > times.max() - days * DAY_S]
        counts = np.bincount(recent, minlength=data.n_items + 1)[1:].astype(np.float64)
        overall = _popularity(data)
        self.scores = counts + overall / (overall.max() + 1)


class CoOccurrence:
    """How often each item occurred within `window` events of the user's last item, in any
    user's training events; all-time popularity breaks ties."""

    def __init__(self, data: SequenceData, window: int = 5) -> None:
        pairs_a, pairs_b = [], []
        for u in range(len(data.users)):
            seq = data.items[u][: data.train_end(u)]
            for d in range(1, window + 1):
                pairs_a += [seq[:-d], seq[d:]]
                pairs_b += [seq[d:], seq[:-d]]
        a = np.concatenate(pairs_a) if pairs_a else np.zeros(0, np.int64)
        b = np.concatenate(pairs_b) if pairs_b else np.zeros(0, np.int64)
        keep = a != b
        keys, counts = np.unique(a[keep] * (data.n_items + 1) + b[keep], return_counts=True)
        self.rows, self.cols = keys // (data.n_items + 1), keys % (data.n_items + 1)
        self.counts = counts.astype(np.float64)
        self.row_start = np.searchsorted(self.rows, np.arange(data.n_items + 2))  # CSR pointers
        overall = _popularity(data)
        self.fallback = overall / (overall.max() + 1)  # (N,) < 1

    def __call__(self, inputs: Inputs) -> np.ndarray:
        out = np.broadcast_to(self.fallback, (len(inputs.items), len(self.fallback))).copy()
        for r, last in enumerate(inputs.items[:, -1]):
            lo, hi = self.row_start[last], self.row_start[last + 1]
            out[r, self.cols[lo:hi] - 1] += self.counts[lo:hi]
        return out


class CategoryMarkov:
    """A category-transition model: P(next category | the last event's category), counted over
    consecutive training events (add-one smoothed), times each item's share of its category's
    training events. Scores are probabilities over the catalogue."""

    def __init__(self, data: SequenceData) -> None:
        self.item_cat = data.item_category_index()  # (N+1,)
        n_cat = len(data.category_vocab()) + 1
        counts = np.ones((n_cat, n_cat))
        for u in range(len(data.users)):
            cats = self.item_cat[data.items[u][: data.train_end(u)]]
            np.add.at(counts, (cats[:-1], cats[1:]), 1.0)
        counts[:, 0] = 0.0
        self.transition = counts / counts.sum(axis=1, keepdims=True)  # (C+1, C+1) rows: from
        popularity = _popularity(data) + 1.0  # (N,)
        per_cat = np.bincount(self.item_cat[1:], weights=popularity, minlength=n_cat)
        self.within = popularity / per_cat[self.item_cat[1:]]  # (N,) share within its category

    def __call__(self, inputs: Inputs) -> np.ndarray:
        last = self.item_cat[inputs.items[:, -1]]  # (B,)
        return self.transition[last][:, self.item_cat[1:]] * self.within  # (B, N)


def all_baselines(data: SequenceData) -> dict[str, object]:
    return {
        "most_popular": MostPopular(data),
        "recent_popular": RecentPopular(data),
        "cooccurrence": CoOccurrence(data),
    }
