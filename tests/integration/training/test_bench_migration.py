"""`make bench-migration` on a tiny generated domain: every method's row is produced for both
granularities, the moved share is the harness's definition, the baselines' figures are real
(bounded and not all equal), and an interrupted benchmark resumes from its kept runs."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from tests.bench import migration as bench
from training import migration
from training.data import load_files

from .conftest import TINY, write_domain


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("migration-data")
    write_domain(root / "amazon", "Tiny", seed=7, asin_prefix="B", titles=("red lipstick", "hiking boots"))
    return root


def test_the_table_has_every_method_and_resumes(datasets, tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**TINY, "epochs": 2, "use_text": False}))
    out = tmp_path / "migration.json"
    args = ["--datasets", str(datasets), "--domains", "Tiny", "--seeds", "1", "--coarse-seeds", "1",
            "--no-taobao", "--config", str(config), "--jobs", "2", "--work", str(tmp_path / "runs"),
            "--out", str(out)]
    assert bench.main(args) == 0
    assert capsys.readouterr().err.count("[migration] start") == 4  # 2 granularities x (baselines, model)

    groups = json.loads(out.read_text())["groups"]
    assert set(groups) == {"Tiny-fine", "Tiny-coarse"}
    for name, group in groups.items():
        methods = group["methods"]
        assert len(methods) == len(bench.BASELINE_NAMES) + 2
        data = load_files(f"s3rec:{datasets / 'amazon' / 'Tiny'}", categories=name.split("-")[1])
        _, moved = migration.move_labels(data, "test", bench.WINDOW)
        for rows in methods.values():
            assert rows[0]["moved_share"] == pytest.approx(moved.mean())
            assert 0.0 <= rows[0]["AUC_move"] <= 1.0
        served = methods[bench.SERVED][0]
        for key in ("ECE_move", "dest_top1", "dest_top3", "NDCG@10_moved", "NDCG@10_stayed", "cat_hit@10_moved"):
            assert 0.0 <= served[key] <= 1.0
        aucs = [rows[0]["AUC_move"] for rows in methods.values()]
        assert len(set(np.round(aucs, 6))) > 1  # the predictors are really computed, not a constant

    before = out.read_text()
    assert bench.main([*args, "--table-only"]) == 0  # nothing retrained: the kept runs give the same table
    assert json.loads(out.read_text())["groups"] == json.loads(before)["groups"]
