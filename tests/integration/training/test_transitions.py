"""The transition-prior experiment counts only training steps, and at weight 0 judges a package
exactly as its training run did."""

import numpy as np
import pytest

from training.experiments import transitions
from training.train import RunOptions, main

from .conftest import TINY
from .test_step_prior import training_counts


def dense(steps, n_items):
    return steps.rows(np.arange(n_items + 1), n_items)  # (N+1, N): row = from, column j = item j + 1


def test_step_features_count_training_steps_only(tiny):
    counts, n = training_counts(tiny), tiny.n_items
    want = np.zeros((n + 1, n), dtype=np.float32)
    for (a, b), c in counts.items():
        want[a, b - 1] = c
    np.testing.assert_allclose(dense(transitions.StepMatrix(tiny, "logcount"), n), np.log1p(want), rtol=1e-6)
    prob = dense(transitions.StepMatrix(tiny, "prob"), n)
    out = want.sum(axis=1)
    np.testing.assert_allclose(prob[out > 0].sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(prob[out > 0], want[out > 0] / out[out > 0, None], rtol=1e-6)
    both = np.zeros((n + 1, n + 1), dtype=np.float32)
    both[:, 1:] = want
    both = both + both.T
    np.testing.assert_allclose(dense(transitions.StepMatrix(tiny, "both"), n), np.log1p(both[:, 1:]), rtol=1e-6)
    with pytest.raises(ValueError, match="feature must be one of"):
        transitions.StepMatrix(tiny, "cosine")


def test_weight_zero_is_the_package_as_trained(tiny, tmp_path):
    report = main(data=tiny, out=str(tmp_path / "m"), run=RunOptions(overrides=TINY, epochs=2, progress=False))
    rows = transitions.run(tiny, report["package"], ("prob",), threads=1)
    plain = next(r for r in rows if r["weight"] == 0.0)
    assert plain["test_NDCG@10"] == pytest.approx(report["metrics"]["NDCG@10"], abs=1e-9)  # served = evaluated
    assert {r["weight"] for r in rows} == set(transitions.WEIGHTS)
    assert len({round(r["test_NDCG@10"], 9) for r in rows}) > 1  # the prior changes the ranking
