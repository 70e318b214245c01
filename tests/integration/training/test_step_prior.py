"""The step prior: the served logits add the fitted weight times log(1 + count) of the step from
the shopper's last item, counted over training events only; the exported graphs and the
candidate ranking carry it exactly, the weight is chosen on validation, and packages saved
before it existed load as they were trained."""

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from shared import model_package as pkg
from training import evaluation, step_prior
from training.data import eval_set
from training.export import load_weights
from training.model import ModelConfig, ShiftRec, saved_config
from training.train import RunOptions, build_model, load_warm_start, main, torch_scorer

from .conftest import TINY
from .test_model_variants import sequence, small_model


def training_counts(data) -> dict[tuple[int, int], int]:
    counts: dict[tuple[int, int], int] = {}
    for u in range(len(data.users)):
        seq = data.items[u][: data.train_end(u)]  # held-out events never enter
        for a, b in itertools.pairwise(seq.tolist()):
            if a != b:
                counts[(a, b)] = counts.get((a, b), 0) + 1
    return counts


@pytest.mark.parametrize("k", [1, 2, 1000])
def test_steps_keep_each_items_strongest_training_steps(tiny, k):
    starts, cols, values = tiny.item_steps(k)
    counts = training_counts(tiny)
    assert starts.shape == (tiny.n_items + 2,) and starts[-1] == len(cols) == len(values)
    for item in range(tiny.n_items + 1):
        out = sorted(((-c, b) for (a, b), c in counts.items() if a == item))[:k]  # strongest, ties by item
        lo, hi = starts[item], starts[item + 1]
        assert cols[lo:hi].tolist() == [b for _, b in out]
        np.testing.assert_allclose(values[lo:hi], np.log1p([-c for c, _ in out]), rtol=1e-6)
    assert (starts[1:] - starts[:-1]).max() == min(k, max(np.bincount([a for a, _ in counts])))
    with pytest.raises(ValueError, match="steps kept per item must be >= 1"):
        tiny.item_steps(0)


def stepped_model(weight: float, **over) -> ShiftRec:
    """small_model with steps 3 -> 5 (count 2), 3 -> 7 (1), 5 -> 3 (4): item 3's row holds two."""
    plain = small_model(**over)
    starts = torch.zeros(plain.cfg.n_items + 2, dtype=torch.int64)
    starts[4:] = 2  # item 3: entries 0, 1
    starts[6:] = 3  # item 5: entry 2
    steps = (starts, torch.tensor([5, 7, 3]), torch.log1p(torch.tensor([2.0, 1.0, 4.0])))
    model = ShiftRec(plain.cfg, plain.item_tags, item_categories=plain.item_cat, item_steps=steps).eval()
    model.load_state_dict({**plain.state_dict(), **{k: v for k, v in model.state_dict().items() if "step" in k}})
    model.step_weight.fill_(weight)
    return model


def test_the_prior_adds_the_weighted_log_count_of_the_step_from_the_last_item():
    off, on = stepped_model(0.0), stepped_model(0.7)
    items, types, times = (torch.cat(parts) for parts in zip(*(sequence(n, 8, n) for n in (2, 5, 8))))
    items[0, -1], items[1, -1], items[2, -1] = 3, 5, 9  # 9 has no step from it
    with torch.no_grad():
        plain, prior = off.serve(items, types, times)["base"], on.serve(items, types, times)["base"]
    want = torch.zeros_like(plain)
    want[0, 5 - 1], want[0, 7 - 1], want[1, 3 - 1] = 0.7 * np.log1p(2.0), 0.7 * np.log1p(1.0), 0.7 * np.log1p(4.0)
    torch.testing.assert_close(prior - plain, want, rtol=0, atol=1e-5)


def test_the_candidate_ranking_carries_the_prior_exactly():
    """With every item in the mass sample, `rank_candidates` gives `serve`'s scores for any
    candidates, the step prior and the re-weighting on (the retrieval path ranks as the exact one)."""
    model = stepped_model(1.3)
    model.beta.fill_(1.0)
    items, types, times = (torch.cat(parts) for parts in zip(*(sequence(n, 8, n) for n in (2, 5, 8))))
    items[:, -1] = torch.tensor([3, 5, 3])
    with torch.no_grad():
        out = model.serve(items, types, times)
        table = model.item_table()[1:]
        mass = (table, model.item_cat[1:], torch.ones(table.shape[0]), torch.arange(table.shape[0]))
        candidates = torch.tensor([[4, 6, 0, 1], [2, 8, 4, 10], [6, 4, 12, 19]])  # items 5 / 7, 3 among them
        got = model.rank_candidates(out["user"], items, candidates, table[candidates], mass=mass)
        torch.testing.assert_close(got, out["scores"].gather(1, candidates), rtol=0, atol=1e-5)
        without = stepped_model(0.0)
        without.beta.fill_(1.0)
        assert not torch.allclose(without.serve(items, types, times)["scores"].gather(1, candidates), got, atol=1e-3)


@pytest.mark.parametrize(("over", "steps", "message"), [
    ({"step_prior_k": -1}, None, "step_prior_k must be >= 0"),
    ({}, (torch.zeros(5, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), torch.zeros(0)), "item_steps needs"),
    ({}, (torch.zeros(22, dtype=torch.int64), torch.zeros(2, dtype=torch.int64), torch.zeros(1)), "item_steps needs")])
def test_a_bad_step_prior_is_refused(over, steps, message):
    cfg = ModelConfig(n_items=20, n_tags=4, n_categories=3, max_len=8, dim=16, use_text=False, **over)
    with pytest.raises(ValueError, match=message):
        ShiftRec(cfg, torch.randint(0, 5, (21, 2)), item_steps=steps)


def test_the_weight_is_the_best_on_validation(tiny):
    report = main(data=tiny, out=None, run=RunOptions(overrides={**TINY, "epochs": 2}, progress=False))
    fit = report["step_prior_fit"]
    by_weight = {float(w): v for w, v in fit["valid_NDCG@10_by_weight"].items()}
    assert set(by_weight) == set(step_prior.WEIGHTS)
    assert fit["weight"] == max(by_weight, key=lambda w: (by_weight[w], -w))
    assert len(set(by_weight.values())) > 1  # the prior moves the ranking: the choice is not vacuous


def test_a_package_serves_what_was_evaluated_with_the_prior_on(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(step_prior, "WEIGHTS", (1.5,))  # a weight away from 0, whatever tiny prefers
    report = main(data=tiny, out=str(tmp_path / "m"), run=RunOptions(overrides={**TINY, "epochs": 1}, progress=False))
    assert report["step_prior_fit"]["weight"] == 1.5
    version = tmp_path / "m" / pkg.latest_version(tmp_path / "m")
    assert float(load_weights(version)["state_dict"]["step_weight"]) == 1.5
    assert pkg.load_manifest(version).metrics["step_prior_weight"] == 1.5  # what operators read
    assert pkg.load_manifest(version).metrics["parity"]["max_abs_diff_scores"] <= 1e-4
    served = evaluation.evaluate_package(str(version), tiny)
    assert served["NDCG@10"] == pytest.approx(report["metrics"]["NDCG@10"], abs=1e-6)  # served = evaluated


def test_a_model_without_the_prior_exports_with_weight_zero(tiny, tmp_path):
    main(data=tiny, out=str(tmp_path / "m"), run=RunOptions(overrides={**TINY, "epochs": 1, "step_prior_k": 0},
                                                            progress=False))
    version = tmp_path / "m" / pkg.latest_version(tmp_path / "m")
    assert pkg.load_manifest(version).metrics["step_prior_weight"] == 0.0
    assert "step_weight" not in load_weights(version)["state_dict"]


def test_a_package_from_before_the_prior_loads_as_trained_and_a_fine_tune_refits_it(tiny):
    old_cfg = ModelConfig(**{**TINY, "step_prior_k": 0, "n_items": tiny.n_items, "n_tags": tiny.n_tags,
                             "n_categories": len(tiny.category_vocab())})
    old = build_model(old_cfg, tiny, 1)
    saved = {k: v for k, v in old.cfg.__dict__.items() if k != "step_prior_k"}  # the field did not exist
    loaded = ShiftRec.from_state(ModelConfig(**saved_config(saved)), old.state_dict())
    assert loaded.cfg.step_prior_k == 0 and "step_weight" not in loaded.state_dict()

    child = build_model(ModelConfig(**{**old_cfg.__dict__, "step_prior_k": 64}), tiny, 1)
    own = {k: v.clone() for k, v in child.state_dict().items() if k.startswith("step_")}
    parent = stepped_model(2.0)  # another catalogue's steps, a fitted weight
    load_warm_start(child, {"state_dict": parent.state_dict(), "item_vocab": [], "tag_vocab": []}, tiny)
    for name, value in own.items():  # this data's steps, and the weight left to be fitted again
        torch.testing.assert_close(child.state_dict()[name], value)
    assert float(child.step_weight) == 0.0


def test_the_evaluation_scorer_reads_the_prior(tiny):
    model = build_model(ModelConfig(**{**TINY, "n_items": tiny.n_items, "n_tags": tiny.n_tags,
                                       "n_categories": len(tiny.category_vocab())}), tiny, 1)
    inputs = eval_set(tiny, "valid", TINY["max_len"]).inputs
    plain = torch_scorer(model, torch.device("cpu"))(inputs)
    model.step_weight.fill_(1.0)
    with_prior = torch_scorer(model, torch.device("cpu"))(inputs)
    prior = model.step_prior(torch.from_numpy(inputs.items)).numpy()
    assert prior.any()
    np.testing.assert_allclose(with_prior - plain, prior, atol=1e-4)
