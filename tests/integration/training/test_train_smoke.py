"""One-epoch training, export and parity on a tiny generated dataset; determinism; training
from the event store equals training from the same events in files."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from shared import model_package as pkg
from training import evaluation
from training.data import HOLDOUT_TEST, load_store
from training.model import ModelConfig
from training.train import RunOptions, TrainConfig, main, train

from .conftest import TINY


def one_epoch(data, seed=0):
    return train(data, ModelConfig(**TINY), TrainConfig(epochs=1, seed=seed, device="cpu"), progress=False)


def test_split_is_leave_one_out(tiny):
    for u in range(len(tiny.users)):
        n = len(tiny.items[u])
        assert tiny.target_index(u, "test") == n - 1
        assert tiny.target_index(u, "valid") == n - 2
        assert tiny.train_end(u) == n - 2
    serving = tiny.with_holdout("serving")
    assert serving.target_index(0, "valid") == len(tiny.items[0]) - 1
    assert serving.target_index(0, "test") == -1


def test_one_epoch_export_and_parity(tiny, tmp_path):
    report = main(data=tiny, out=str(tmp_path / "models"),
        run=RunOptions(overrides={**TINY, "epochs": 1}, device="cpu", progress=False))
    version = pkg.latest_version(tmp_path / "models")
    package = tmp_path / "models" / version
    assert report["package"] == str(package)
    assert sorted(p.name for p in package.iterdir()) == sorted(
        [pkg.MODEL_FILE, pkg.MANIFEST_FILE, pkg.CURVE_FILE, "weights.pt"])
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]
    manifest = pkg.load_manifest(package)
    assert manifest.item_vocab == tiny.item_vocab
    assert manifest.data_fingerprint == tiny.fingerprint()
    assert manifest.metrics["parity"]["max_abs_diff_scores"] <= 1e-4

    # the serving side's re-check: the manifest's parity sample through ONNX Runtime
    session = ort.InferenceSession(str(package / pkg.MODEL_FILE), providers=["CPUExecutionProvider"])
    feeds = {n: np.array(v, dtype=np.int64) for n, v in manifest.parity_sample["inputs"].items()}
    scores, probs, user = session.run(list(pkg.OUTPUT_NAMES), feeds)
    assert scores.shape == (len(feeds[pkg.INPUT_ITEM_IDS]), tiny.n_items)
    assert user.shape == (scores.shape[0], manifest.dim)
    assert ((probs >= 0) & (probs <= 1)).all()
    top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    assert [[manifest.item_vocab[j] for j in row] for row in top] == manifest.parity_sample["top10_item_ids"]
    np.testing.assert_allclose(np.take_along_axis(scores, top, 1),
                               manifest.parity_sample["top10_scores"], atol=1e-4)
    # dynamic batch: one row alone scores as it does in a batch
    alone = session.run([pkg.OUTPUT_SCORES], {n: v[:1] for n, v in feeds.items()})[0]
    np.testing.assert_allclose(alone[0], scores[0], atol=1e-5)

    # the graph carries the item table once, row-major (N+1, D): history rows gathered along its
    # first axis, the scores one Gemm reading it transposed (no folded transposed copy beside it)
    graph = onnx.load(str(package / pkg.MODEL_FILE)).graph
    tables = [i for i in graph.initializer if len(i.dims) == 2 and tiny.n_items + 1 in tuple(i.dims)]
    assert [tuple(i.dims) for i in tables] == [(tiny.n_items + 1, manifest.dim)]
    readers = [n for n in graph.node if tables[0].name in n.input]
    assert sorted(n.op_type for n in readers) == ["Gather", "Gemm"]
    assert {a.name: a.i for a in next(n for n in readers if n.op_type == "Gemm").attribute}.get("transB") == 1
    assert {a.name: a.i for a in next(n for n in readers if n.op_type == "Gather").attribute}.get("axis", 0) == 0

    # the ONNX package evaluates in the same harness as the PyTorch model did
    onnx_metrics = evaluation.evaluate_package(str(tmp_path / "models"), tiny)
    assert onnx_metrics["NDCG@10"] == pytest.approx(report["metrics"]["NDCG@10"], abs=1e-6)


def test_a_second_publish_moves_latest(tiny, tmp_path):
    models = tmp_path / "models"
    main(data=tiny, out=str(models),
        run=RunOptions(overrides={**TINY, "epochs": 1}, device="cpu", progress=False, version="v1"))
    main(data=tiny, out=str(models),
        run=RunOptions(overrides={**TINY, "epochs": 1}, device="cpu", progress=False, version="v2"))
    assert pkg.latest_version(models) == "v2"
    assert (models / "v1" / pkg.MANIFEST_FILE).exists()
    with pytest.raises(FileExistsError):
        main(data=tiny, out=str(models),
            run=RunOptions(overrides={**TINY, "epochs": 1}, device="cpu", progress=False, version="v2"))
    assert pkg.latest_version(models) == "v2"


def test_training_is_deterministic_under_a_seed(tiny):
    a, b, c = one_epoch(tiny, seed=3), one_epoch(tiny, seed=3), one_epoch(tiny, seed=4)
    assert a.history[0]["loss"] == b.history[0]["loss"]
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert a.history[0]["loss"] != c.history[0]["loss"]


def test_the_learning_rate_decays_after_each_epoch_that_does_not_improve(tiny):
    result = train(tiny, ModelConfig(**TINY), TrainConfig(epochs=8, patience=8, lr=1e-2, plateau_decay=0.5,
                                                          device="cpu"), progress=False)
    lr, best = 1e-2, 0.0
    for row in result.history:  # each row: the rate its epoch trained with
        assert row["lr"] == lr, row
        if row["valid_NDCG@10"] <= best:
            lr *= 0.5
        best = max(best, row["valid_NDCG@10"])
    assert result.history[-1]["lr"] < 1e-2  # some epoch did not improve: the check was not vacuous


def test_with_ema_the_package_holds_the_moving_average_of_the_steps(tiny):
    """The run with `ema` trains exactly as without (same steps); what it keeps is the average
    after each step, e = d * e + (1 - d) * w, started at the first step's weights."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    steps: list[list[torch.Tensor]] = []  # every parameter after each step, in the model's order
    hook = register_optimizer_step_post_hook(
        lambda opt, args, kwargs: steps.append([p.detach().clone() for p in opt.param_groups[0]["params"]]))
    try:
        plain = train(tiny, ModelConfig(**TINY), TrainConfig(epochs=1, batch_size=8, device="cpu"), progress=False)
    finally:
        hook.remove()
    averaged = train(tiny, ModelConfig(**TINY), TrainConfig(epochs=1, batch_size=8, device="cpu", ema=0.9),
                     progress=False)
    assert averaged.history[0]["loss"] == plain.history[0]["loss"]  # the same training
    assert averaged.best_epoch == 1 and len(steps) > 2
    for i, got in enumerate(averaged.model.parameters()):
        want = steps[0][i]
        for step in steps[1:]:
            want = 0.9 * want + 0.1 * step[i]
        torch.testing.assert_close(got, want)
    assert not torch.allclose(averaged.model.item_emb.weight, plain.model.item_emb.weight, atol=1e-4)


@pytest.mark.parametrize("ema", [1.0, -0.5])
def test_bad_ema_is_refused(tiny, ema):
    with pytest.raises(ValueError, match="ema"):
        train(tiny, ModelConfig(**TINY), TrainConfig(epochs=1, device="cpu", ema=ema), progress=False)


def test_store_and_files_give_the_same_training(tiny_dir, tiny, tmp_path):
    from shared.datasets import read_s3rec, s3rec_events, s3rec_items
    from shared.store import EventStore, create_store_engine, upgrade_schema

    url = f"sqlite:///{tmp_path / 'events.db'}"
    engine = create_store_engine(url)
    upgrade_schema(engine)
    store = EventStore(engine)
    domain = read_s3rec(tiny_dir, "Tiny")
    store.upsert_items(s3rec_items(domain), updated_at_us=1)
    store.insert_events(list(s3rec_events(domain)), received_at_us=1)
    engine.dispose()

    from_store = load_store(url, holdout=HOLDOUT_TEST)
    assert from_store.fingerprint() == tiny.fingerprint()
    a, b = one_epoch(tiny), one_epoch(from_store)
    assert a.history[0]["loss"] == b.history[0]["loss"]
    assert a.history[0]["valid_NDCG@10"] == b.history[0]["valid_NDCG@10"]


def test_sampled_softmax_and_ablation_train(tiny):
    for over in ({"loss": "sampled", "n_negatives": 16},
                 {"use_tags": False, "use_types": False, "use_time": False}):
        result = train(tiny, ModelConfig(**{**TINY, **over}), TrainConfig(epochs=1, device="cpu"),
                       progress=False)
        assert np.isfinite(result.history[0]["loss"])


def test_finetune_starts_from_the_parent_and_records_it(tiny, tmp_path):
    models = tmp_path / "models"
    main(data=tiny, out=str(models),
        run=RunOptions(overrides={**TINY, "epochs": 1}, device="cpu", progress=False, version="parent"))
    # lr 0: the child's weights stay the parent's, so its scores must be the parent's
    main(data=tiny, out=str(models),
        run=RunOptions(overrides={"epochs": 1, "lr": 0.0}, device="cpu", progress=False, version="child",
            finetune_from=str(models)))
    parent, child = pkg.load_manifest(models / "parent"), pkg.load_manifest(models / "child")
    assert child.parent_version == "parent"
    assert child.config["model"]["dim"] == TINY["dim"]
    np.testing.assert_allclose(child.parity_sample["top10_scores"], parent.parity_sample["top10_scores"],
                               atol=1e-6)


@pytest.mark.parametrize("field", ["graph_weight", "graph_text_k"])
def test_a_parent_saved_before_a_field_existed_fine_tunes_as_it_was_trained(tiny, tmp_path, field):
    """A package written before `field` existed has no such key: it was trained without what the
    field turns on (the item graph, its text edges), so its child must not gain it from today's
    default (lr 0: same scores)."""
    import torch

    from training.export import WEIGHTS_FILE

    assert getattr(ModelConfig(), field) != 0  # today's default turns it on: the test means something
    models = tmp_path / "models"
    main(data=tiny, out=str(models), run=RunOptions(overrides={**TINY, field: 0, "epochs": 1},
                                                    device="cpu", progress=False, version="old"))
    weights = torch.load(models / "old" / WEIGHTS_FILE, weights_only=True)
    del weights["model_config"][field]
    torch.save(weights, models / "old" / WEIGHTS_FILE)
    main(data=tiny, out=str(models), run=RunOptions(overrides={"epochs": 1, "lr": 0.0}, device="cpu",
                                                    progress=False, version="child", finetune_from=str(models)))
    parent, child = pkg.load_manifest(models / "old"), pkg.load_manifest(models / "child")
    assert child.config["model"][field] == 0
    np.testing.assert_allclose(child.parity_sample["top10_scores"], parent.parity_sample["top10_scores"],
                               atol=1e-6)


def test_cli_init_from_an_empty_model_dir_trains_from_scratch_then_fine_tunes(tiny_dir, tmp_path):
    """The scheduled job runs `shiftrec train --out D --init-from D`: the first run has nothing
    to start from and trains from scratch; the next one fine-tunes from what the first published."""
    from app.cli import main as cli

    models = tmp_path / "models"
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    args = ["train", "--data", f"s3rec:{tiny_dir / 'Tiny'}", "--out", str(models), "--init-from", str(models),
            "--epochs", "1", "--device", "cpu", "--config", str(config)]
    assert cli([*args, "--version", "first"]) == 0
    assert pkg.load_manifest(models / "first").parent_version is None
    assert cli([*args, "--version", "second"]) == 0
    assert pkg.load_manifest(models / "second").parent_version == "first"
    assert pkg.latest_version(models) == "second"
