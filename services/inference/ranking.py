"""The inference core: recommendations, interest probabilities and profiles from a user's
history and the current model. Plain values in and out; no gRPC here."""

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from services.inference.profile import InterestProfile, cosine_distance, interest_profile
from services.inference.registry import ModelRegistry
from services.inference.runtime import ModelRuntime, Step
from shared.errors import InvalidArgument
from shared.retrieval import top_columns
from shared.validation import id_problem

MAX_K = 1000
MAX_SCORE_ITEMS = 1000
MAX_RECENT_WINDOW = 1000


class Strategy(enum.IntEnum):
    """How a list was produced; values match shiftrec.v1.Strategy."""

    MODEL = 1
    RECENT_POPULAR = 2
    FALLBACK_FEATURES_UNAVAILABLE = 3


@dataclass(frozen=True)
class Recommendations:
    items: list[tuple[str, float]]
    strategy: Strategy
    model_version: str


@dataclass(frozen=True)
class Probabilities:
    items: list[tuple[str, float]]
    unknown: list[str]
    model_version: str


@dataclass(frozen=True)
class Profile:
    interest: InterestProfile
    model_shift: float
    model_version: str
    shift_probability: float = 0.0  # calibrated P(next event leaves the recent categories)
    next_categories: list[tuple[str, float]] = field(default_factory=list)  # most likely first
    shift_window: int = 0  # the events P(move) looks back on (the package's); 0 = not predicted

NEXT_CATEGORIES = 10


def check_user(user_id: str) -> None:
    problem = id_problem(user_id)
    if problem:
        raise InvalidArgument([("user_id", problem)])


def check_recommend(user_id: str, k: int, exclude: Sequence[str]) -> None:
    violations = []
    if problem := id_problem(user_id):
        violations.append(("user_id", problem))
    if not 1 <= k <= MAX_K:
        violations.append(("k", f"must be within 1..{MAX_K} (got {k})"))
    if len(exclude) > MAX_SCORE_ITEMS:
        violations.append(("exclude_item_ids", f"at most {MAX_SCORE_ITEMS} ids (got {len(exclude)})"))
    if violations:
        raise InvalidArgument(violations)


def check_score(user_id: str, item_ids: Sequence[str]) -> None:
    violations = []
    if problem := id_problem(user_id):
        violations.append(("user_id", problem))
    if not 1 <= len(item_ids) <= MAX_SCORE_ITEMS:
        violations.append(("item_ids", f"must hold 1..{MAX_SCORE_ITEMS} ids (got {len(item_ids)})"))
    violations += [(f"item_ids[{i}]", p) for i, item in enumerate(item_ids) if (p := id_problem(item))]
    if violations:
        raise InvalidArgument(violations)


def check_profile(user_id: str, recent_window: int) -> None:
    violations = []
    if problem := id_problem(user_id):
        violations.append(("user_id", problem))
    if not 0 <= recent_window <= MAX_RECENT_WINDOW:
        violations.append(("recent_window", f"must be within 0..{MAX_RECENT_WINDOW} (got {recent_window})"))
    if violations:
        raise InvalidArgument(violations)


def _allowed_mask(
    runtime: ModelRuntime, seen: Sequence[str], exclude: Sequence[str], category: str | None, include_seen: bool
) -> np.ndarray:
    allowed = np.ones(len(runtime.item_vocab), dtype=bool)
    if not include_seen:
        allowed[runtime.known_indices(seen)] = False
    allowed[runtime.known_indices(exclude)] = False
    if category is not None:
        in_category = np.zeros_like(allowed)
        in_category[runtime.category_columns.get(category, np.zeros(0, dtype=np.int64))] = True
        allowed &= in_category
    return allowed


def _top_k(scores: np.ndarray, allowed: np.ndarray, k: int) -> np.ndarray:
    candidates = np.flatnonzero(allowed)
    if len(candidates) > k:
        part = np.argpartition(-scores[candidates], k - 1)[:k]
        candidates = candidates[part]
    return candidates[np.lexsort((candidates, -scores[candidates]))]  # best first, ties by index


CATEGORY_RANK_MAX = 65_536  # a category filter this small is ranked in full by the small graph


def _retrieved(runtime: ModelRuntime, feeds: dict[str, np.ndarray], seen: Sequence[str], exclude: Sequence[str],
               category: str | None, include_seen: bool, k: int) -> list[tuple[str, float]] | None:
    """A retrieval package's answer, or None where it cannot give k items the exact path would
    allow (the caller then scores the whole catalogue). Without a category: the index's
    candidates, ranked, filtered. With one: every item of the category ranked by the small graph,
    which orders them exactly as the whole-catalogue scores do (the migration term is one
    constant within a category)."""
    banned = set(runtime.known_indices(exclude).tolist())
    if not include_seen:
        banned |= set(runtime.known_indices(seen).tolist())
    if category is None:
        columns, scores = runtime.retrieve(feeds)
    else:
        columns = runtime.category_columns.get(category, np.zeros(0, dtype=np.int64))
        if not 0 < len(columns) <= CATEGORY_RANK_MAX:
            return [] if not len(columns) else None
        columns = columns[None]
        scores = runtime.rank_columns(feeds, columns)
    picked = []
    for column, score in zip(*(a[0].tolist() for a in top_columns(columns, scores, k + len(banned)))):
        if column >= 0 and column not in banned:
            picked.append((runtime.item_vocab[column], float(score)))
            if len(picked) == k:
                return picked
    # fewer than k allowed among the candidates: exact unless the category has no more to give
    return picked if category is not None else None


class Inference:
    """Answers the three questions for a user's history with the model the registry holds."""

    def __init__(self, registry: ModelRegistry, default_recent_window: int = 10) -> None:
        self.registry = registry
        self.default_recent_window = default_recent_window

    def popular(
        self, k: int, category: str | None, exclude: Sequence[str], seen: Sequence[str] = (),
        strategy: Strategy = Strategy.RECENT_POPULAR,
    ) -> Recommendations:
        """Recently popular items (from the model package), filtered like model results."""
        runtime = self.registry.current()
        allowed = _allowed_mask(runtime, seen, exclude, category, include_seen=False)
        picked = []
        for rank, item in enumerate(runtime.popular_items):
            if allowed[runtime.item_index[item] - 1]:
                picked.append((item, 1.0 / (rank + 1)))
                if len(picked) == k:
                    break
        return Recommendations(picked, strategy, runtime.version)

    def recommend(
        self, history: Sequence[Step], k: int, category: str | None, exclude: Sequence[str], include_seen: bool
    ) -> Recommendations:
        runtime = self.registry.current()
        feeds = runtime.encode([history])
        if not feeds["item_ids"].any():  # no usable history: nothing for the model to read
            return self.popular(k, category, exclude, [s.item_id for s in history])
        seen = [s.item_id for s in history]
        if runtime.retrieval is not None:
            items = _retrieved(runtime, feeds, seen, exclude, category, include_seen, k)
            if items is not None:
                return Recommendations(items, Strategy.MODEL, runtime.version)
        scores = runtime.run_scores(feeds)
        allowed = _allowed_mask(runtime, seen, exclude, category, include_seen)
        top = _top_k(scores[0], allowed, k)
        items = [(runtime.item_vocab[i], float(scores[0, i])) for i in top]
        return Recommendations(items, Strategy.MODEL, runtime.version)

    def score_items(self, history: Sequence[Step], item_ids: Sequence[str]) -> Probabilities:
        """Calibrated probabilities. With no usable history every item gets the model's
        no-information prior (the calibration applied to a uniform log-probability)."""
        runtime = self.registry.current()
        known = [i for i in item_ids if i in runtime.item_index]
        unknown = [i for i in item_ids if i not in runtime.item_index]
        feeds = runtime.encode([history])
        if feeds["item_ids"].any():
            _, probabilities, _ = runtime.run(feeds)
            row = probabilities[0]
            values = [float(row[runtime.item_index[i] - 1]) for i in known]
        else:
            cal = runtime.manifest.calibration
            prior = 1.0 / (1.0 + np.exp(-(cal["a"] * -np.log(len(runtime.item_vocab)) + cal["b"])))
            values = [float(prior)] * len(known)
        return Probabilities(list(zip(known, values, strict=True)), unknown, runtime.version)

    def profile(self, history: Sequence[Step], categories: Sequence[str], recent_window: int) -> Profile:
        runtime = self.registry.current()
        window = recent_window or self.default_recent_window
        interest = interest_profile(categories, [s.event_type for s in history], window)
        shift, p_move, upcoming = 0.0, 0.0, []
        feeds = runtime.encode([history, history[-window:]])
        if feeds["item_ids"][0].any():
            user, moves, next_categories = runtime.run_profile(feeds)  # row 0: the whole history
            if len(history) > window and feeds["item_ids"][1].any():
                shift = cosine_distance(user[0], user[1])
            if moves is not None and next_categories is not None:
                p_move = float(moves[0])
                row = next_categories[0]
                # most likely first; items without a category ("") are no destination to name
                top = [c for c in np.argsort(-row, kind="stable") if runtime.categories[c] and row[c] > 0]
                upcoming = [(runtime.categories[c], float(row[c])) for c in top[:NEXT_CATEGORIES]]
        window_used = runtime.shift_window if runtime.has_shift else 0
        return Profile(interest, shift, runtime.version, p_move, upcoming, window_used)
