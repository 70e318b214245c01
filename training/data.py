"""Behaviour sequences for training and evaluation, read from the event store or from dataset
files into one indexed form, split leave-one-out per user and padded into model inputs.

Both sources go through the same records (`shared.datasets` turns files into the store's
`EventRecord`/`ItemRecord`), so training from the store and from the same events in a file
gives identical data. Torch-free: the ONNX evaluation path uses it too.
"""

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from shared.encoding import encode_events, item_index, pad_left
from shared.store import EventRecord, ItemRecord

HOLDOUT_TEST = "test"  # literature: last event = test target, second-to-last = validation
HOLDOUT_SERVING = "serving"  # for serving: last event = validation target, nothing else held out


@dataclass
class SequenceData:
    """Per-user event sequences (oldest first) over an item vocabulary with item tags."""

    item_vocab: list[str]  # model item index i + 1 <-> item_vocab[i]; 0 = padding
    item_titles: list[str]  # aligned with item_vocab
    tag_vocab: list[str]  # tag index j + 1 <-> tag_vocab[j]; 0 = padding
    item_tags: np.ndarray  # (N + 1, T) int64 tag indices of each item, 0-padded; row 0 = padding
    users: list[str]
    items: list[np.ndarray]  # per user (n_u,) int64 item indices
    types: list[np.ndarray]  # per user (n_u,) int64 event types
    times: list[np.ndarray]  # per user (n_u,) int64 unix seconds
    holdout: str = HOLDOUT_TEST
    source: str = ""
    item_categories: list[str] | None = None  # aligned with item_vocab ("" when unknown)
    train_users: np.ndarray | None = None  # (U,) bool: whose training events feed the loss (None: all)
    train_since: int | None = None  # unix seconds: only targets at or after it feed the loss

    @property
    def n_items(self) -> int:
        return len(self.item_vocab)

    @property
    def n_tags(self) -> int:
        return len(self.tag_vocab)

    def category_vocab(self) -> list[str]:
        """The items' distinct categories, sorted: category index c + 1 <-> category_vocab[c]."""
        return sorted(set(self.item_categories or [""] * self.n_items))

    def item_category_index(self) -> np.ndarray:
        """(N + 1,) int64 category index of each item (1-based; row 0 = padding = 0)."""
        index = {c: j + 1 for j, c in enumerate(self.category_vocab())}
        names = self.item_categories or [""] * self.n_items
        return np.array([0] + [index[c] for c in names], dtype=np.int64)

    def with_holdout(self, holdout: str) -> "SequenceData":
        return replace(self, holdout=holdout)

    def with_train_since(self, since: int | None) -> "SequenceData":
        return replace(self, train_since=since)

    def trains_on(self, user: int) -> bool:
        return self.train_users is None or bool(self.train_users[user])

    def item_known(self) -> np.ndarray:
        """(N + 1,) bool: items occurring in the training events (row 0 = padding, False)."""
        known = np.zeros(self.n_items + 1, dtype=bool)
        for u in range(len(self.users)):
            if self.trains_on(u):
                known[self.items[u][: self.train_end(u)]] = True
        known[0] = False
        return known

    def last_timestamp(self) -> int:
        """The newest event time (unix seconds) in any sequence, 0 when there is none."""
        return max((int(t[-1]) for t in self.times if len(t)), default=0)

    def target_index(self, user: int, split: str) -> int:
        """Position of the user's `split` target ("valid" or "test") in its sequence, or -1."""
        n = len(self.items[user])
        if self.holdout == HOLDOUT_TEST:
            if n < 3:
                return -1
            return n - 2 if split == "valid" else n - 1
        if split == "valid" and n >= 2:
            return n - 1
        return -1

    def item_transitions(self, window: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The training events' item graph: (2, E) int64 edges (source, destination) between items
        that follow one another within `window` events in a shopper's training events, in both
        directions, and (E,) float32 weights: the steps' count, each step of g events counting 1/g,
        over sqrt(degree of each end) (LightGCN's symmetric normalisation). Held-out events never
        enter it."""
        if window < 1:
            raise ValueError(f"the item graph's window must be >= 1 event, not {window!r}")
        seqs = self.training_sequences()
        pairs = [(seq[:-g], seq[g:], 1.0 / g) for g in range(1, window + 1) for seq in seqs if len(seq) > g]
        a = np.concatenate([p[0] for p in pairs]) if pairs else np.zeros(0, np.int64)
        b = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0, np.int64)
        step = np.concatenate([np.full(len(p[0]), p[2]) for p in pairs]) if pairs else np.zeros(0)
        keep = a != b
        src, dst = np.r_[a[keep], b[keep]].astype(np.int64), np.r_[b[keep], a[keep]].astype(np.int64)
        width = self.n_items + 1
        edges, where = np.unique(src * width + dst, return_inverse=True)
        counts = np.bincount(where, weights=np.r_[step[keep], step[keep]], minlength=len(edges))
        return normalised_graph(edges // width, edges % width, counts, width)

    def training_sequences(self) -> list[np.ndarray]:
        """Each training shopper's items before their held-out events (what the item graphs count)."""
        return [self.items[u][: self.train_end(u)] for u in range(len(self.users)) if self.trains_on(u)]

    def item_steps(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The training events' directed steps, item a then item b (a != b) in one shopper's
        training events, as compressed rows: `starts` (N+2,) int64, row a's entries at
        starts[a]:starts[a+1] of `cols` (E,) int64 (b) and `values` (E,) float32 (log(1 + the
        step's count)), each row's strongest k (by count, ties by item) first. Held-out events
        never enter it."""
        if k < 1:
            raise ValueError(f"the steps kept per item must be >= 1, not {k!r}")
        seqs = self.training_sequences()
        src = np.concatenate([s[:-1] for s in seqs if len(s) > 1] or [np.zeros(0, np.int64)]).astype(np.int64)
        dst = np.concatenate([s[1:] for s in seqs if len(s) > 1] or [np.zeros(0, np.int64)]).astype(np.int64)
        keep = src != dst
        width = self.n_items + 1
        pairs, counts = np.unique(src[keep] * width + dst[keep], return_counts=True)
        rows, cols = pairs // width, pairs % width
        order = np.lexsort((cols, -counts, rows))  # by row, strongest first, ties by item
        rows, cols, counts = rows[order], cols[order], counts[order]
        first = np.searchsorted(rows, rows)  # each entry's row start
        kept = np.arange(len(rows)) - first < k
        rows, cols, counts = rows[kept], cols[kept], counts[kept]
        starts = np.zeros(width + 1, dtype=np.int64)
        starts[1:] = np.cumsum(np.bincount(rows, minlength=width))
        return starts, cols.astype(np.int64), np.log1p(counts).astype(np.float32)

    def train_end(self, user: int) -> int:
        """Events before this position are training data."""
        valid = self.target_index(user, "valid")
        return valid if valid >= 0 else len(self.items[user])

    def fingerprint(self) -> str:
        """sha256 over vocabulary, item features and every sequence (order included)."""
        h = hashlib.sha256()
        h.update("\x1f".join(self.item_vocab).encode())
        h.update("\x1f".join(self.tag_vocab).encode())
        h.update(np.ascontiguousarray(self.item_tags).tobytes())
        for user, items, types, times in zip(self.users, self.items, self.types, self.times):
            h.update(user.encode())
            h.update(items.tobytes())
            h.update(types.tobytes())
            h.update(times.tobytes())
        h.update(self.holdout.encode())
        return h.hexdigest()


def normalised_graph(src: np.ndarray, dst: np.ndarray, weight: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(2, E) int64 edges and (E,) float32 weights of a symmetric graph over `width` nodes, each
    weight over sqrt(degree of each end) (LightGCN's symmetric normalisation)."""
    degree = np.bincount(src, weights=weight, minlength=width)
    weights = (weight / np.sqrt(degree[src] * degree[dst])).astype(np.float32)
    return np.stack([src, dst]).astype(np.int64), weights


def from_records(
    events: Iterable[EventRecord], catalogue: Iterable[ItemRecord], *, holdout: str, source: str = ""
) -> SequenceData:
    """Index events (any order across users; per user, ties keep their given order).

    The vocabulary is every item that occurs in an event or in the catalogue, sorted by id (a
    catalogue item nobody has touched yet is a cold-start item: the model scores it from its
    attributes and text); an item's tags are its catalogue tags plus its category.
    """
    per_user: dict[str, list[EventRecord]] = defaultdict(list)
    for event in events:
        per_user[event.user_id].append(event)
    records = {item.item_id: item for item in catalogue}
    item_vocab = sorted({e.item_id for evs in per_user.values() for e in evs} | set(records))
    index = item_index(item_vocab)

    item_tag_names = []
    for item in item_vocab:
        rec = records.get(item)
        names = [*rec.tags, rec.category] if rec is not None else []
        item_tag_names.append(list(dict.fromkeys(n for n in names if n)))
    tag_vocab = sorted({t for names in item_tag_names for t in names})
    tag_index = {t: j + 1 for j, t in enumerate(tag_vocab)}
    width = max((len(names) for names in item_tag_names), default=0) or 1
    item_tags = np.zeros((len(item_vocab) + 1, width), dtype=np.int64)
    for i, names in enumerate(item_tag_names, start=1):
        item_tags[i, : len(names)] = [tag_index[t] for t in names]
    titles = [records[i].title if i in records else "" for i in item_vocab]
    categories = [records[i].category if i in records else "" for i in item_vocab]

    users = sorted(per_user)
    items, types, times = [], [], []
    for user in users:
        evs = sorted(per_user[user], key=lambda e: e.occurred_at_us)  # stable
        user_items, user_types, user_times = encode_events(evs, index)
        items.append(user_items)
        types.append(user_types)
        times.append(user_times)
    return SequenceData(item_vocab, titles, tag_vocab, item_tags, users, items, types, times,
                        holdout, source, categories)


def load_files(spec: str, *, holdout: str = HOLDOUT_TEST, categories: str = "coarse") -> SequenceData:
    """`s3rec:DIR/Beauty` (the S3-Rec Amazon files with that prefix) or `taobao:FILE.csv`.
    `categories` picks the Amazon items' category granularity (`shared.datasets.s3rec_items`)."""
    from shared.datasets import read_s3rec, read_taobao, s3rec_events, s3rec_items

    kind, _, path = spec.partition(":")
    if kind == "s3rec":
        prefix = Path(path)
        domain = read_s3rec(prefix.parent, prefix.name)
        return from_records(s3rec_events(domain), s3rec_items(domain, categories=categories),
                            holdout=holdout, source=spec)
    if kind == "taobao":
        data = read_taobao(path)
        return from_records(data.events, data.items, holdout=holdout, source=spec)
    raise ValueError(f"--data must look like s3rec:DIR/Beauty or taobao:FILE.csv, got {spec!r}")


def load_store(database_url: str, *, holdout: str = HOLDOUT_SERVING) -> SequenceData:
    """Every stored event and the catalogue, from the event store."""
    from shared.store import EventStore, create_store_engine

    store = EventStore(create_store_engine(database_url))
    events = (event for event, _seq in store.iter_events())
    return from_records(events, store.all_items(), holdout=holdout, source="store")


@dataclass
class Inputs:
    """Model inputs for a set of users, left-padded (B, L)."""

    items: np.ndarray
    types: np.ndarray
    times: np.ndarray

    def rows(self, index: np.ndarray) -> "Inputs":
        return Inputs(self.items[index], self.types[index], self.times[index])


def training_arrays(data: SequenceData, max_len: int) -> tuple[Inputs, np.ndarray]:
    """Next-item examples over each user's training events: inputs e[:-1], targets e[1:]."""
    ins, tys, tms, tgt = [], [], [], []
    for u in range(len(data.users)):
        end = data.train_end(u)
        if end < 2 or not data.trains_on(u):
            continue
        target = data.items[u][1:end]
        if data.train_since is not None:  # older targets are context only
            target = np.where(data.times[u][1:end] >= data.train_since, target, 0)
            if not target.any():
                continue
        ins.append(data.items[u][: end - 1])
        tys.append(data.types[u][: end - 1])
        tms.append(data.times[u][: end - 1])
        tgt.append(target)
    inputs = Inputs(pad_left(ins, max_len), pad_left(tys, max_len), pad_left(tms, max_len))
    return inputs, pad_left(tgt, max_len)


@dataclass
class EvalSet:
    """Users with a target in one split: their history before the target, and the target."""

    users: np.ndarray  # (U,) user indices into SequenceData.users
    inputs: Inputs  # (U, L) the history, left-padded to max_len
    targets: np.ndarray  # (U,) item indices
    histories: list[np.ndarray]  # full histories (not truncated), for masking
    n_items: int = 0  # the catalogue the users are ranked against (bounds the scoring batches)


# Full ranking scores every user against every item. Past this many user x item scores per
# split (Amazon Sports: 6.3e8) a fixed, seeded sample of the split's users is evaluated instead,
# so that a million-item catalogue validates 2,000 users rather than all of them.
EVAL_SCORE_BUDGET = 2_000_000_000


def eval_set(data: SequenceData, split: str, max_len: int) -> EvalSet:
    users, hist_i, hist_ty, hist_tm, targets = [], [], [], [], []
    candidates = [u for u in range(len(data.users)) if data.target_index(u, split) >= 1]
    cap = max(1, EVAL_SCORE_BUDGET // max(data.n_items, 1))
    if len(candidates) > cap:
        candidates = sorted(np.random.default_rng(0).choice(candidates, cap, replace=False).tolist())
    for u in candidates:
        t = data.target_index(u, split)
        users.append(u)
        hist_i.append(data.items[u][:t])
        hist_ty.append(data.types[u][:t])
        hist_tm.append(data.times[u][:t])
        targets.append(data.items[u][t])
    inputs = Inputs(pad_left(hist_i, max_len), pad_left(hist_ty, max_len), pad_left(hist_tm, max_len))
    return EvalSet(np.array(users, dtype=np.int64), inputs, np.array(targets, dtype=np.int64), hist_i, data.n_items)
