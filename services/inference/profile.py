"""Interest profiles: long-term and recent interest over categories, weighted by behaviour type
and recency, and how far the recent interest drifted (Jensen-Shannon divergence). Pure numpy."""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# How strongly each behaviour signals interest (index = EventType value; 0 = unspecified).
TYPE_WEIGHTS = np.array([0.0, 1.0, 1.0, 2.0, 3.0, 2.0, 3.0])
LONG_TERM_HALF_LIFE = 50.0  # events: the long-term view still leans to the present
TOP_MOVES = 3


@dataclass(frozen=True)
class InterestProfile:
    long_term: list[tuple[str, float]]  # category, share; shares sum to 1, largest first
    recent: list[tuple[str, float]]
    drift_score: float  # JSD(long_term, recent), base 2, in [0, 1]
    rising: list[tuple[str, float]]  # category, how much its share grew
    fading: list[tuple[str, float]]  # category, how much its share shrank


def _distribution(
    categories: Sequence[str], weights: np.ndarray, names: list[str]
) -> np.ndarray:
    index = {c: i for i, c in enumerate(names)}
    dist = np.zeros(len(names))
    for category, weight in zip(categories, weights, strict=True):
        if category:
            dist[index[category]] += weight
    total = dist.sum()
    return dist / total if total > 0 else dist


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """JSD in bits: 0 for equal distributions, 1 for disjoint ones."""
    if p.sum() == 0 or q.sum() == 0:
        return 0.0
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / m[mask])))

    return float(np.clip(0.5 * kl(p) + 0.5 * kl(q), 0.0, 1.0))


def interest_profile(
    categories: Sequence[str], event_types: Sequence[int], recent_window: int
) -> InterestProfile:
    """Profile of one history (oldest first). The recent window is the last `recent_window`
    events; both views weight events by type, and the long-term view also by recency."""
    n = len(categories)
    types = np.clip(np.asarray(event_types, dtype=np.int64), 0, len(TYPE_WEIGHTS) - 1)
    type_w = TYPE_WEIGHTS[types] if n else np.zeros(0)
    age = np.arange(n - 1, -1, -1, dtype=np.float64)  # 0 for the newest event
    long_w = type_w * 0.5 ** (age / LONG_TERM_HALF_LIFE)
    recent_w = np.where(age < recent_window, type_w, 0.0)
    names = sorted({c for c in categories if c})
    long_term = _distribution(categories, long_w, names)
    recent = _distribution(categories, recent_w, names)
    delta = recent - long_term

    def ranked(dist: np.ndarray) -> list[tuple[str, float]]:
        order = np.argsort(-dist, kind="stable")
        return [(names[i], float(dist[i])) for i in order if dist[i] > 0]

    order = np.argsort(-delta, kind="stable")
    rising = [(names[i], float(delta[i])) for i in order[:TOP_MOVES] if delta[i] > 1e-9]
    fading = [(names[i], float(-delta[i])) for i in order[::-1][:TOP_MOVES] if delta[i] < -1e-9]
    return InterestProfile(ranked(long_term), ranked(recent), jensen_shannon(long_term, recent), rising, fading)


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    """(1 - cos) / 2, in [0, 1]."""
    denominator = float(np.linalg.norm(a) * np.linalg.norm(b))
    if denominator == 0:
        return 0.0
    return float(np.clip((1.0 - float(a @ b) / denominator) / 2.0, 0.0, 1.0))
