"""Ranking and classification metrics against hand-computed values."""

import math

import numpy as np
import pytest

from training import metrics


def test_ranks_count_strictly_greater_and_ties():
    scores = np.array([[0.9, 0.5, 0.7, 0.5], [0.1, 0.2, 0.3, 0.4]])
    greater, ties = metrics.target_ranks(scores, np.array([1, 3]))
    assert greater.tolist() == [2, 0]  # 0.9 and 0.7 beat 0.5; nothing beats 0.4
    assert ties.tolist() == [1, 0]  # the other 0.5


def test_hr_ndcg_mrr_without_ties():
    # targets at 0-based ranks 0, 3 and 12
    out = metrics.ranking_metrics(np.array([0, 3, 12]), np.zeros(3, dtype=int), ks=(5, 10, 20))
    assert out["HR@5"] == pytest.approx(2 / 3)
    assert out["HR@10"] == pytest.approx(2 / 3)
    assert out["HR@20"] == pytest.approx(1.0)
    assert out["NDCG@5"] == pytest.approx((1 + 1 / math.log2(5)) / 3)
    assert out["NDCG@20"] == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(14)) / 3)
    assert out["MRR"] == pytest.approx((1 + 1 / 4 + 1 / 13) / 3)


def test_ties_are_the_expectation_over_random_tie_breaking():
    # 4 items above, the target tied with 3 others: rank uniform on 4..7
    out = metrics.ranking_metrics(np.array([4]), np.array([3]), ks=(5, 10))
    assert out["HR@5"] == pytest.approx(1 / 4)  # only rank 4 is inside the top 5
    assert out["HR@10"] == pytest.approx(1.0)
    assert out["NDCG@5"] == pytest.approx(1 / math.log2(6) / 4)
    assert out["NDCG@10"] == pytest.approx(sum(1 / math.log2(r + 2) for r in range(4, 8)) / 4)
    assert out["MRR"] == pytest.approx(sum(1 / (r + 1) for r in range(4, 8)) / 4)


def test_auc_counts_ties_as_half():
    assert metrics.auc(np.array([3.0, 1.0]), np.array([2.0, 0.0])) == pytest.approx(3 / 4)
    assert metrics.auc(np.array([1.0]), np.array([1.0, 0.0])) == pytest.approx(3 / 4)
    assert metrics.auc(np.array([0.0]), np.array([1.0])) == 0.0


def test_gauc_averages_per_user_auc():
    pos = np.array([5.0, 0.0])
    neg = np.array([[1.0, 6.0], [1.0, 0.0]])  # user 1: 1/2; user 2: (0 + 1/2)/2
    assert metrics.gauc(pos, neg) == pytest.approx((0.5 + 0.25) / 2)


def test_precision_recall_f1_at_threshold():
    out = metrics.precision_recall_f1(np.array([0.9, 0.6, 0.4, 0.2]), np.array([1, 0, 1, 0]))
    assert out["precision"] == pytest.approx(0.5)
    assert out["recall"] == pytest.approx(0.5)
    assert out["F1"] == pytest.approx(0.5)


def test_platt_recovers_a_known_logistic_relation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=20_000)
    y = (rng.random(20_000) < 1 / (1 + np.exp(-(2.0 * x - 1.0)))).astype(float)
    a, b = metrics.fit_platt(x, y, balance=False)
    assert a == pytest.approx(2.0, abs=0.15)
    assert b == pytest.approx(-1.0, abs=0.1)


def test_balanced_platt_ignores_the_sampling_ratio():
    # positives ~ N(1, 1), negatives ~ N(-1, 1): with equal priors the log-odds are exactly 2x,
    # whatever the ratio of positives to negatives in the sample
    rng = np.random.default_rng(1)
    x = np.r_[rng.normal(1.0, 1.0, 5_000), rng.normal(-1.0, 1.0, 50_000)]
    y = np.r_[np.ones(5_000), np.zeros(50_000)]
    a, b = metrics.fit_platt(x, y, balance=True)
    assert a == pytest.approx(2.0, abs=0.15)
    assert b == pytest.approx(0.0, abs=0.1)
