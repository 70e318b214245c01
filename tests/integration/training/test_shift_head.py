"""The shift head in a real training run on the tiny domain: it leaves the next-item model
exactly as it is without it (detached by default), its fitted constants reach the package, and
the package's shift outputs hold parity in ONNX Runtime and match the evaluated figures."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

pytest.importorskip("torch")

from shared import model_package as pkg
from training import migration
from training.train import RunOptions, main

from .conftest import TINY


def run(tiny, tmp_path, **over):
    return main(data=tiny, out=str(tmp_path), run=RunOptions(
        overrides={**TINY, "epochs": 2, "use_text": False, **over}, device="cpu", progress=False))


def test_the_detached_head_leaves_the_next_item_model_unchanged(tiny, tmp_path):
    with_head = run(tiny, tmp_path / "head")
    without = run(tiny, tmp_path / "plain", shift_weight=0.0)
    assert [r["valid_NDCG@10"] for r in with_head["history"]] == [r["valid_NDCG@10"] for r in without["history"]]
    plain_a = with_head["migration"]["next_item_only"]
    plain_b = without["migration"]["next_item_only"]
    for key in ("NDCG@10_all", "NDCG@10_moved", "NDCG@10_stayed", "cat_hit@10_moved"):
        assert plain_a[key] == plain_b[key]


def test_the_package_serves_what_was_evaluated(tiny, tmp_path):
    report = run(tiny, tmp_path)
    fit = report["migration_fit"]
    manifest = pkg.load_manifest(report["package"])
    assert manifest.shift == {"window": 5, "calibration": pytest.approx(fit["shift_calibration"]),
                              "dest_mix": fit["dest_mix"], "beta": fit["beta"], "head": True}
    assert manifest.categories == tiny.category_vocab()
    parity = manifest.metrics["parity"]
    assert parity["max_abs_diff_shift_probability"] <= 1e-4
    assert parity["max_abs_diff_category_probabilities"] <= 1e-4

    # the package's P(move) on the test histories gives the AUC the report measured
    weights = torch.load(f"{report['package']}/weights.pt", weights_only=True)
    assert float(weights["state_dict"]["beta"]) == fit["beta"]
    es, moved = migration.move_labels(tiny, "test", 5, manifest.max_len)
    session = ort.InferenceSession(f"{report['package']}/{pkg.MODEL_FILE}", providers=["CPUExecutionProvider"])
    feeds = {pkg.INPUT_ITEM_IDS: es.inputs.items, pkg.INPUT_EVENT_TYPES: es.inputs.types,
             pkg.INPUT_TIMESTAMPS: es.inputs.times}
    shift, categories = session.run(list(pkg.SHIFT_OUTPUT_NAMES), feeds)
    assert ((shift >= 0) & (shift <= 1)).all()
    np.testing.assert_allclose(categories.sum(axis=1), 1.0, atol=1e-4)
    from training.metrics import auc

    assert auc(shift[moved], shift[~moved]) == pytest.approx(report["migration"]["served"]["AUC_move"], abs=1e-6)
