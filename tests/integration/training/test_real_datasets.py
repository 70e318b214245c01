"""Training paths on the real dataset folder (`../shared/datasets` beside the checkout, or
$SHIFTREC_DATASETS); skipped with a reason when it is absent."""

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from shared import model_package as pkg
from training import baselines, evaluation
from training.data import load_files
from training.train import RunOptions, main

REPO_ROOT = Path(__file__).resolve().parents[3]
DATASETS = Path(os.environ.get("SHIFTREC_DATASETS", REPO_ROOT.parent / "shared" / "datasets"))
pytestmark = pytest.mark.skipif(
    not (DATASETS / "amazon" / "Beauty.txt").exists(),
    reason=f"real datasets not found at {DATASETS} (set SHIFTREC_DATASETS)",
)


@pytest.fixture(scope="module")
def beauty():
    return load_files(f"s3rec:{DATASETS / 'amazon' / 'Beauty'}")


def test_beauty_matches_the_published_statistics(beauty):
    # the dataset README's table: the literature's Beauty
    assert len(beauty.users) == 22_363
    assert beauty.n_items == 12_101
    assert sum(len(s) for s in beauty.items) == 198_502
    assert all(len(s) >= 5 for s in beauty.items)
    assert all(np.all(np.diff(t) >= 0) for t in beauty.times)


def test_baselines_rank_above_chance_on_beauty(beauty):
    chance = 10 / beauty.n_items  # HR@10 of a random ranking
    for name, scorer in baselines.all_baselines(beauty).items():
        raw = evaluation.collect(beauty, scorer, "test", 50, n_negatives=10)
        hr10 = evaluation.metrics.ranking_metrics(raw.greater, raw.ties, (10,))["HR@10"]
        assert hr10 > 2 * chance, name
        assert 0 < raw.shifted.mean() < 1


def test_taobao_trains_exports_and_evaluates(tmp_path):
    data = load_files(f"taobao:{DATASETS / 'taobao' / 'UserBehavior_head.csv'}")
    assert {int(t) for s in data.types for t in s} <= {1, 3, 4, 5}
    report = main(data=data, out=str(tmp_path),
        run=RunOptions(overrides={"epochs": 1, "dim": 16}, device="cpu", progress=False))
    manifest = pkg.load_manifest(report["package"])
    assert len(manifest.item_vocab) == data.n_items
    onnx = evaluation.evaluate_package(str(tmp_path), data)
    assert onnx["NDCG@10"] == pytest.approx(report["metrics"]["NDCG@10"], abs=1e-6)
