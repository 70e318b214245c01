"""A storefront simulator: shoppers browse and buy in categories that hold their interest, and
some of them move to another category at a known moment. The stream is realistic enough to
train on (popular items, item-to-item paths, view -> cart -> purchase funnels) and the planted
shifts are known, so a demo or a test can check that they are detected."""

from dataclasses import dataclass, field

import numpy as np

from shared.store import EventRecord, ItemRecord

CATEGORIES = ("makeup", "skincare", "fragrance", "haircare", "nails", "bath", "tools", "mens")
VIEW, CLICK, ADD_TO_CART, PURCHASE, FAVORITE = 1, 2, 3, 4, 5
DAY_US = 86_400_000_000
MINUTE_US = 60_000_000


@dataclass(frozen=True)
class PlantedShift:
    """Shopper `user_id` moved from `before` to `after` at `at_us`."""

    user_id: str
    before: str
    after: str
    at_us: int


@dataclass
class Shopper:
    user_id: str
    interest: str
    events: list[EventRecord] = field(default_factory=list)


@dataclass
class StorefrontSimulator:
    """Deterministic for a seed. `items_per_category` items per category, Zipf-popular, with a
    favourite "next item" each, so sequences carry signal beyond popularity."""

    seed: int = 0
    items_per_category: int = 40
    platform: str = "demo-store"
    stay_probability: float = 0.85  # an event stays in the shopper's current category
    follow_probability: float = 0.5  # the next item is the current item's usual successor

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.items: dict[str, list[ItemRecord]] = {}
        for c, category in enumerate(CATEGORIES):
            self.items[category] = [
                ItemRecord(
                    item_id=f"{category}-{j:03d}",
                    title=f"{category.title()} item {j}",
                    category=category,
                    tags=(category, f"brand:{(c * 7 + j) % 12}", f"line:{category}-{j // 10}"),
                    brand=f"Brand {(c * 7 + j) % 12}",
                    price=float(5 + (j * 37 + c * 11) % 95),
                )
                for j in range(self.items_per_category)
            ]
        ranks = np.arange(1, self.items_per_category + 1)
        self.popularity = (1.0 / ranks) / (1.0 / ranks).sum()
        self.successor = {
            category: self.rng.permutation(self.items_per_category) for category in CATEGORIES
        }
        self._counter = 0
        self.planted: list[PlantedShift] = []

    def catalogue(self) -> list[ItemRecord]:
        return [item for category in CATEGORIES for item in self.items[category]]

    def shopper(self, n: int) -> Shopper:
        return Shopper(f"shopper-{self.seed}-{n:05d}", CATEGORIES[int(self.rng.integers(len(CATEGORIES)))])

    def browse(self, shopper: Shopper, n_events: int, start_us: int, spacing_us: int = 30 * MINUTE_US) -> int:
        """Append `n_events` events from `start_us`; returns the time after the last one."""
        t = start_us
        last: tuple[str, int] | None = None
        for _ in range(n_events):
            if self.rng.random() < self.stay_probability:
                category = shopper.interest
            else:
                category = CATEGORIES[int(self.rng.integers(len(CATEGORIES)))]
            if last is not None and last[0] == category and self.rng.random() < self.follow_probability:
                j = int(self.successor[category][last[1]])
            else:
                j = int(self.rng.choice(self.items_per_category, p=self.popularity))
            roll = self.rng.random()
            kind = VIEW if roll < 0.6 else CLICK if roll < 0.8 else ADD_TO_CART if roll < 0.9 \
                else FAVORITE if roll < 0.95 else PURCHASE
            t += int(spacing_us * (0.5 + self.rng.random()))
            self._counter += 1
            shopper.events.append(EventRecord(
                event_id=f"{self.platform}:{self.seed}:{self._counter}",
                user_id=shopper.user_id,
                item_id=self.items[category][j].item_id,
                event_type=kind,
                occurred_at_us=t,
                platform=self.platform,
            ))
            last = (category, j)
        return t

    def shift(self, shopper: Shopper, at_us: int) -> PlantedShift:
        """Move the shopper's interest to another category."""
        others = [c for c in CATEGORIES if c != shopper.interest]
        after = others[int(self.rng.integers(len(others)))]
        planted = PlantedShift(shopper.user_id, shopper.interest, after, at_us)
        shopper.interest = after
        return planted

    def population(
        self, n_shoppers: int, events_per_shopper: tuple[int, int], start_us: int, end_us: int,
        shift_share: float = 0.3,
    ) -> list[Shopper]:
        """Shoppers with histories spread between `start_us` and `end_us`; a `shift_share` of
        them move to another category somewhere in the middle of their history (recorded in
        `self.planted`)."""
        shoppers = []
        for n in range(n_shoppers):
            shopper = self.shopper(n)
            length = int(self.rng.integers(*events_per_shopper))
            # gaps are 0.5..1.5 x spacing, so the last event stays before end_us
            spacing = max(int((end_us - start_us) / (1.5 * (length + 1))), MINUTE_US)
            t = start_us + int(self.rng.integers(0, spacing))
            if self.rng.random() < shift_share and length >= 6:
                before = int(self.rng.integers(length // 3, 2 * length // 3 + 1))
                t = self.browse(shopper, before, t, spacing)
                self.planted.append(self.shift(shopper, t))
                self.browse(shopper, length - before, t, spacing)
            else:
                self.browse(shopper, length, t, spacing)
            shoppers.append(shopper)
        return shoppers
