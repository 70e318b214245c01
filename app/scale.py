"""A storefront at scale, for the scale benchmarks: N items over C categories and E events from
shoppers whose interest drifts between categories, deterministic by seed and generated in
chunks (memory stays flat whatever E is).

- categories are Zipf-popular (exponent `category_skew`), and each item belongs to one, drawn
  by that popularity, so big categories hold many items;
- items are Zipf-popular within the catalogue (exponent `item_skew`, over a random ranking),
  and an event picks an item of the shopper's current category by that popularity;
- each shopper starts in a category drawn by popularity and, at every next event, leaves it
  with probability `move_probability` for another drawn the same way: the interest migration
  the product is about;
- event types follow a browse funnel (mostly views, then clicks, carts, purchases), gaps between
  a shopper's events are exponential (mean `mean_gap_hours`), shoppers start uniformly over
  `span_days` before `end_us`, and history lengths are geometric with mean E / shoppers.

`events()` yields EventRecords shopper by shopper; `items()` the catalogue.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from shared.store import EventRecord, ItemRecord

VIEW, CLICK, ADD_TO_CART, PURCHASE = 1, 2, 3, 4
FUNNEL = np.array([0.70, 0.15, 0.10, 0.05])
HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US


@dataclass(frozen=True)
class ScaleStorefront:
    items_n: int
    events_n: int
    categories_n: int = 200
    shoppers_n: int = 0  # 0: events_n // 20
    seed: int = 0
    item_skew: float = 1.05
    category_skew: float = 0.8
    move_probability: float = 0.2
    mean_gap_hours: float = 20.0
    span_days: int = 365
    end_us: int = 1_767_225_600 * 1_000_000  # 2026-01-01T00:00:00Z
    chunk_shoppers: int = 20_000
    platform: str = "scale-store"

    def __post_init__(self) -> None:
        if self.items_n < 1 or self.events_n < 1 or self.categories_n < 1:
            raise ValueError("items_n, events_n and categories_n must be at least 1")

    @property
    def shoppers(self) -> int:
        return self.shoppers_n or max(1, self.events_n // 20)

    # -- the catalogue ----------------------------------------------------------------------------
    def _catalogue(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(category of each item (N,); items ordered by category, most popular first (N,); the
        cumulative popularity over that order, category c's items spanning (c, c + 1]; and the
        end of each category's run in that order (C,))."""
        rng = np.random.default_rng([self.seed, 1])
        category = rng.choice(self.categories_n, size=self.items_n, p=self.category_popularity())
        rank = rng.permutation(self.items_n) + 1
        order = np.lexsort((rank, category))
        cat_sorted = category[order]
        weight = rank[order].astype(np.float64) ** -self.item_skew
        counts = np.bincount(cat_sorted, minlength=self.categories_n)
        seg_end = np.cumsum(counts)
        csum = np.concatenate([[0.0], np.cumsum(weight)])
        before = csum[seg_end - counts]  # (C,) popularity before each category's run
        totals = np.where(counts > 0, csum[seg_end] - before, 1.0)
        cum = cat_sorted + (csum[1:] - before[cat_sorted]) / totals[cat_sorted]
        return category, order, cum, seg_end

    def category_popularity(self) -> np.ndarray:
        p = np.arange(1, self.categories_n + 1, dtype=np.float64) ** -self.category_skew
        return p / p.sum()

    def items(self) -> list[ItemRecord]:
        category = self._catalogue()[0]
        rng = np.random.default_rng([self.seed, 2])
        brands = rng.integers(0, 5_000, self.items_n)
        prices = np.round(rng.lognormal(3.0, 0.8, self.items_n), 2)
        return [ItemRecord(item_id=f"i{j}", title=f"item {j} of category {c}", category=f"c{c}",
                           tags=(f"c{c}", f"brand:{b}"), brand=f"brand {b}", price=float(p))
                for j, (c, b, p) in enumerate(zip(category.tolist(), brands.tolist(), prices.tolist(), strict=True))]

    # -- the events -------------------------------------------------------------------------------
    def events(self) -> Iterator[EventRecord]:
        """Exactly `events_n` events, shopper after shopper (each shopper's in time order)."""
        category, order, cum, seg_end = self._catalogue()
        nonempty = np.flatnonzero(np.bincount(category, minlength=self.categories_n))
        cat_p = self.category_popularity()[nonempty]
        cat_p /= cat_p.sum()
        lengths = self._lengths()
        first_user = 0
        for start in range(0, len(lengths), self.chunk_shoppers):
            chunk = lengths[start : start + self.chunk_shoppers]
            yield from self._chunk(first_user, chunk, order, cum, seg_end, nonempty, cat_p)
            first_user += len(chunk)

    def _lengths(self) -> np.ndarray:
        """History lengths: geometric around the mean, at least 1, summing to `events_n`."""
        rng = np.random.default_rng([self.seed, 3])
        n = min(self.shoppers, self.events_n)
        mean = self.events_n / n
        raw = rng.geometric(1.0 / mean, n).astype(np.float64) if mean > 1 else np.ones(n)
        lengths = np.maximum(1, np.floor(raw * (self.events_n - n) / max(raw.sum() - n, 1) + 1)).astype(np.int64)
        lengths = np.where(raw <= 1, 1, lengths)
        diff = self.events_n - int(lengths.sum())
        # hand out (or take back) the rounding remainder one event at a time, longest first
        idx = np.argsort(-lengths, kind="stable")
        step = 1 if diff > 0 else -1
        i = 0
        while diff != 0:
            j = idx[i % n]
            if step > 0 or lengths[j] > 1:
                lengths[j] += step
                diff -= step
            i += 1
        return lengths

    def _chunk(self, first_user: int, lengths: np.ndarray, order: np.ndarray, cum: np.ndarray,
               seg_end: np.ndarray, nonempty: np.ndarray, cat_p: np.ndarray) -> Iterator[EventRecord]:
        rng = np.random.default_rng([self.seed, 4, first_user])
        total = int(lengths.sum())
        user_of = np.repeat(np.arange(len(lengths)), lengths)
        starts = np.cumsum(lengths) - lengths
        position = np.arange(total) - np.repeat(starts, lengths)
        # interest: a new category at each shopper's first event and at each move
        move = (rng.random(total) < self.move_probability) | (position == 0)
        drawn = nonempty[rng.choice(len(nonempty), size=total, p=cat_p)]
        last_move = np.maximum.accumulate(np.where(move, np.arange(total), 0))
        cats = drawn[last_move]
        # an item of that category by popularity
        picked = np.searchsorted(cum, cats + rng.random(total), side="right")
        items = order[np.minimum(picked, seg_end[cats] - 1)]  # rounding never leaves the category
        types = rng.choice(4, size=total, p=FUNNEL) + 1
        gaps = rng.exponential(self.mean_gap_hours * HOUR_US, total).astype(np.int64)
        gaps[position == 0] = 0
        begin = self.end_us - self.span_days * DAY_US + (rng.random(len(lengths)) * self.span_days * DAY_US).astype(np.int64)
        times = np.repeat(begin, lengths) + _segment_cumsum(gaps, starts, lengths)
        times = np.minimum(times, self.end_us)
        for u, j, it, ty, t in zip(user_of.tolist(), position.tolist(), items.tolist(), types.tolist(),
                                   times.tolist(), strict=True):
            user = first_user + u
            yield EventRecord(event_id=f"s{self.seed}-u{user}-{j}", user_id=f"u{user}", item_id=f"i{it}",
                              event_type=ty, occurred_at_us=t, platform=self.platform)


def _segment_cumsum(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Cumulative sums restarting at each segment's start."""
    total = np.cumsum(values)
    before = np.repeat(total[starts] - values[starts], lengths)
    return total - before
