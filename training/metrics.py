"""Ranking and classification metrics in plain numpy: HR/NDCG@k and MRR of a target ranked
against the catalogue (ties broken uniformly at random, in expectation), AUC, GAUC,
precision/recall/F1, and Platt scaling."""

import numpy as np


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For (U, N) scores and (U,) target columns: how many items score strictly higher than the
    target, and how many other items tie with it. Masked items should hold -inf."""
    target_scores = scores[np.arange(len(targets)), targets][:, None]  # (U, 1)
    greater = (scores > target_scores).sum(axis=1)
    ties = (scores == target_scores).sum(axis=1) - 1
    return greater.astype(np.int64), ties.astype(np.int64)


def ranking_metrics(
    greater: np.ndarray, ties: np.ndarray, ks: tuple[int, ...] = (5, 10, 20)
) -> dict[str, float]:
    """HR@k, NDCG@k (one relevant item) and MRR, averaged over users.

    With `ties` items scoring equal to the target, its 0-based rank is uniform over
    greater .. greater + ties; each metric is its expectation over that range.
    """
    greater = np.asarray(greater, dtype=np.int64)
    ties = np.asarray(ties, dtype=np.int64)
    if len(greater) == 0:
        return {**{f"HR@{k}": 0.0 for k in ks}, **{f"NDCG@{k}": 0.0 for k in ks}, "MRR": 0.0}
    lo, hi = greater, greater + ties + 1  # rank range [lo, hi)
    count = (ties + 1).astype(np.float64)
    top = int(hi.max()) + 1
    discount = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(top) + 2.0))])
    reciprocal = np.concatenate([[0.0], np.cumsum(1.0 / (np.arange(top) + 1.0))])
    out: dict[str, float] = {}
    for k in ks:
        inside = np.clip(np.minimum(hi, k) - lo, 0, None)
        out[f"HR@{k}"] = float(np.mean(inside / count))
    for k in ks:
        end = np.maximum(np.minimum(hi, k), lo)
        out[f"NDCG@{k}"] = float(np.mean((discount[end] - discount[lo]) / count))
    out["MRR"] = float(np.mean((reciprocal[hi] - reciprocal[lo]) / count))
    return out


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count 1/2)."""
    pos, neg = np.ravel(pos).astype(np.float64), np.ravel(neg).astype(np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    values = np.concatenate([pos, neg])
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    # average ranks over tied groups (1-based)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], len(values)]
    group_rank = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(group_rank, ends - starts)
    pos_rank_sum = ranks[: len(pos)].sum()
    return float((pos_rank_sum - len(pos) * (len(pos) + 1) / 2.0) / (len(pos) * len(neg)))


def gauc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Per-user AUC of each user's positive (U,) against its own negatives (U, K), averaged
    with equal weight per user (every user has the same number of pairs)."""
    pos = np.asarray(pos, dtype=np.float64)[:, None]
    neg = np.asarray(neg, dtype=np.float64)
    if len(pos) == 0:
        return float("nan")
    per_user = ((pos > neg) + 0.5 * (pos == neg)).mean(axis=1)
    return float(per_user.mean())


def precision_recall_f1(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    predicted = np.asarray(probs) >= threshold
    labels = np.asarray(labels).astype(bool)
    tp = float(np.sum(predicted & labels))
    precision = tp / max(float(predicted.sum()), 1.0)
    recall = tp / max(float(labels.sum()), 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "F1": f1}


def fit_platt(
    scores: np.ndarray, labels: np.ndarray, *, balance: bool = True, iters: int = 50
) -> tuple[float, float]:
    """Logistic regression p = sigmoid(a * score + b) by Newton's method (slightly L2-damped).

    With `balance`, the classes are re-weighted to equal total weight, so p = 0.5 means "as
    likely a real interest as a random item" whatever the sampling ratio was.
    """
    x = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    w = np.ones_like(y)
    if balance and 0 < y.sum() < len(y):
        w = np.where(y > 0, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    mu, sd = x.mean(), x.std() or 1.0
    z = (x - mu) / sd  # standardised for a well-conditioned Newton step
    a, b = 0.0, 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(a * z + b)))
        grad = np.array([np.sum(w * (p - y) * z), np.sum(w * (p - y))]) + 1e-6 * np.array([a, b])
        s = w * p * (1 - p)
        hess = np.array([[np.sum(s * z * z), np.sum(s * z)], [np.sum(s * z), np.sum(s)]]) + 1e-6 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    return float(a / sd), float(b - a * mu / sd)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: the |mean predicted - observed rate| of equal-width probability
    bins, weighted by each bin's share of the samples."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if len(p) == 0:
        return float("nan")
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            total += in_bin.mean() * abs(p[in_bin].mean() - y[in_bin].mean())
    return float(total)
