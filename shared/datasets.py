"""Readers of the public datasets' file formats (S3-Rec Amazon preprocessing, Taobao
UserBehavior) into event and item records; used by `shiftrec import` and by training."""

import csv
import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shared.store import EventRecord, ItemRecord

EVENT_REVIEW = 6
TAOBAO_BEHAVIOURS = {"pv": 1, "cart": 3, "fav": 5, "buy": 4}  # view, add-to-cart, favourite, purchase
# Without a timestamp file, the i-th event of a user gets SYNTHETIC_START + i days.
SYNTHETIC_START_US = 1_388_534_400_000_000  # 2014-01-01
DAY_US = 86_400_000_000


@dataclass
class S3RecDomain:
    """One Amazon domain in the S3-Rec preprocessing (ids dense from 1, sequences oldest first)."""

    name: str
    sequences: dict[int, list[int]]  # s3rec user id -> s3rec item ids
    timestamps: dict[int, list[int]] | None  # s3rec user id -> unix seconds, aligned
    user_names: dict[int, str]  # s3rec user id -> reviewer id
    item_names: dict[int, str]  # s3rec item id -> ASIN
    item_titles: dict[int, str]  # s3rec item id -> title (or the short text label)
    item_attributes: dict[int, list[int]]  # s3rec item id -> attribute ids

    @property
    def platform(self) -> str:
        return f"amazon-{self.name.lower()}"


def read_s3rec(data_dir: str | Path, domain: str, *, timestamps: bool = True) -> S3RecDomain:
    """Read `<domain>.txt` and its companions from `data_dir`; companions are optional except
    the sequences. Users and items keep their s3rec ids when the name files are missing."""
    root = Path(data_dir)
    sequences = _read_int_lines(root / f"{domain}.txt")
    ts_path = root / f"{domain}_timestamps.txt"
    ts = _read_int_lines(ts_path) if timestamps and ts_path.exists() else None
    if ts is not None:
        for user, items in sequences.items():
            if len(ts.get(user, [])) != len(items):
                raise ValueError(f"{ts_path.name}: user {user} has {len(ts.get(user, []))} "
                                 f"timestamps for {len(items)} items")
    user_names: dict[int, str] = {}
    users_path = root / f"{domain}_users.tsv"
    if users_path.exists():
        with users_path.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                user_names[int(row["s3rec_user_id"])] = row["reviewer_id"]
    item_names: dict[int, str] = {}
    item_titles: dict[int, str] = {}
    items_path = root / f"{domain}_items.tsv"
    if items_path.exists():
        with items_path.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                item = int(row["s3rec_item_id"])
                item_names[item] = row["asin"]
                item_titles[item] = (row.get("title") or row.get("p5_textual_id") or "").strip()
    attributes: dict[int, list[int]] = {}
    attr_path = root / f"{domain}_item2attributes.json"
    if attr_path.exists():
        attributes = {int(k): v for k, v in json.loads(attr_path.read_text()).items()}
    return S3RecDomain(domain, sequences, ts, user_names, item_names, item_titles, attributes)


def _read_int_lines(path: Path) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if parts:
                out[int(parts[0])] = [int(x) for x in parts[1:]]
    return out


CATEGORY_LEVELS = ("coarse", "fine")


def s3rec_items(domain: S3RecDomain, categories: str = "coarse") -> list[ItemRecord]:
    """Catalogue records, tags = every attribute as "attr:<id>", and a category:
    - coarse: the item's attribute most frequent across the domain (a top-level category) among
      those on at most half the items (Sports tags every item with its root category, which says
      nothing): 7 values in Beauty;
    - fine: one attribute per item, the first after the leading brand attribute that is on at
      most half the items (the category just below the root): 42 values in Beauty, 25 in Sports
      (with "").
    Items without a qualifying attribute get "" either way."""
    if categories not in CATEGORY_LEVELS:
        raise ValueError(f"categories must be one of {CATEGORY_LEVELS}, got {categories!r}")
    frequency = Counter(a for attrs in domain.item_attributes.values() for a in attrs)
    half = len(domain.item_attributes) / 2
    informative = Counter({a: n for a, n in frequency.items() if n <= half})
    all_items = set(domain.item_names) | set(domain.item_attributes) | {
        i for seq in domain.sequences.values() for i in seq
    }
    records = []
    for item in sorted(all_items):
        attrs = domain.item_attributes.get(item, [])
        if categories == "fine":
            below_root = [a for a in attrs[1:] if a in informative]
            category = f"attr:{below_root[0]}" if below_root else ""
        else:
            candidates = [a for a in attrs if a in informative] or attrs
            category = f"attr:{max(candidates, key=lambda a: (frequency[a], -a))}" if candidates else ""
        records.append(
            ItemRecord(
                item_id=domain.item_names.get(item, str(item)),
                title=domain.item_titles.get(item, ""),
                category=category,
                tags=tuple(f"attr:{a}" for a in attrs),
            )
        )
    return records


def s3rec_events(domain: S3RecDomain, holdout_last: int = 0) -> Iterator[EventRecord]:
    """Every interaction as a REVIEW event, per user oldest first, leaving out each user's last
    `holdout_last`. The i-th event of a user occurs at its day's timestamp + i microseconds, so
    the literature's order survives same-day ties. Event ids are deterministic."""
    for user, items in domain.sequences.items():
        user_id = domain.user_names.get(user, str(user))
        days = domain.timestamps[user] if domain.timestamps is not None else None
        keep = len(items) - holdout_last
        for position, item in enumerate(items[: max(keep, 0)]):
            base = days[position] * 1_000_000 if days is not None else SYNTHETIC_START_US + position * DAY_US
            yield EventRecord(
                event_id=f"{domain.platform}:{user_id}:{position}",
                user_id=user_id,
                item_id=domain.item_names.get(item, str(item)),
                event_type=EVENT_REVIEW,
                occurred_at_us=base + position,
                platform=domain.platform,
            )


@dataclass
class TaobaoData:
    events: list[EventRecord]
    items: list[ItemRecord]


def read_taobao(path: str | Path, holdout_last: int = 0) -> TaobaoData:
    """UserBehavior CSV rows (user, item, category, behaviour, unix seconds) as events, per user
    in time order, leaving out each user's last `holdout_last`. Event ids are deterministic:
    the row's content plus a counter for exact repeats."""
    per_user: dict[str, list[EventRecord]] = defaultdict(list)
    categories: dict[str, str] = {}
    seen: Counter[str] = Counter()
    with Path(path).open(newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            if not row or row[0] == "user_id":
                continue
            user, item, category, behaviour, ts = row[:5]
            key = f"taobao:{user}:{item}:{behaviour}:{ts}"
            seen[key] += 1
            categories[item] = f"cat:{category}"
            per_user[user].append(
                EventRecord(
                    event_id=f"{key}:{seen[key]}",
                    user_id=user,
                    item_id=item,
                    event_type=TAOBAO_BEHAVIOURS.get(behaviour, 0),
                    occurred_at_us=int(ts) * 1_000_000,
                    platform="taobao",
                )
            )
    events = []
    for user_events in per_user.values():
        user_events.sort(key=lambda e: e.occurred_at_us)  # stable: file order breaks ties
        events.extend(user_events[: max(len(user_events) - holdout_last, 0)])
    items = [ItemRecord(item_id=i, category=c, tags=(c,)) for i, c in sorted(categories.items())]
    return TaobaoData(events, items)
