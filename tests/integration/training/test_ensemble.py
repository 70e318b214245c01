"""The seed-ensemble experiment judges each member as the training run judged it, and an
ensemble as the mean of its members' scores."""

import numpy as np
import pytest

from training.data import eval_set
from training.experiments import ensemble
from training.train import RunOptions, main

from .conftest import TINY, write_domain


def publish(data, out, seed):
    report = main(data=data, out=str(out), run=RunOptions(overrides=TINY, epochs=2, seed=seed, progress=False))
    return report["package"], report["metrics"]


def test_members_are_judged_as_trained_and_the_ensemble_is_their_mean(tiny, tiny_dir, tmp_path):
    (a, metrics_a), (b, _) = publish(tiny, tmp_path / "a", 0), publish(tiny, tmp_path / "b", 1)
    rows = ensemble.run(tiny, [a, b, a], threads=1)
    assert [len(r["members"]) for r in rows] == [1, 1, 1, 2, 3]
    assert rows[0]["test_NDCG@10"] == pytest.approx(metrics_a["NDCG@10"], abs=1e-9)  # served = evaluated
    assert rows[0] == {**rows[2], "members": [a]}
    assert rows[0]["test_NDCG@10"] != rows[1]["test_NDCG@10"]  # two seeds, two models

    (sa, _), (sb, _) = ensemble.member_scorer(a, tiny, 1), ensemble.member_scorer(b, tiny, 1)
    inputs = eval_set(tiny, "test", TINY["max_len"]).inputs
    np.testing.assert_allclose(ensemble.mean_scorer([sa, sb])(inputs), (sa(inputs) + sb(inputs)) / 2, atol=1e-6)

    write_domain(tmp_path / "other", "Other", seed=8, asin_prefix="X", titles=("tea", "cups"))
    from training.data import load_files

    with pytest.raises(ValueError, match="another item vocabulary"):
        ensemble.run(load_files(f"s3rec:{tmp_path / 'other' / 'Other'}"), [a], threads=1)
