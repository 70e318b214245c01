"""Transfer learning on tiny generated domains: text vectors, content-only cold-start items,
the data views of the transfer benchmark, cross-domain and temporal fine-tuning, and the
benchmark itself end to end (one epoch per run)."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from shared import model_package as pkg
from training.data import load_files, training_arrays
from training.experiments.views import events_before, hold_out_items, sample_train_users
from training.export import load_weights
from training.model import ModelConfig, ShiftRec
from training.text import TEXT_DIM, encode_texts, item_text_table
from training.train import RunOptions, TrainConfig, main, train

from .conftest import TINY, write_domain

TEXT = {**TINY, "use_text": True}


@pytest.fixture(scope="module")
def two_domains(tmp_path_factory):
    """amazon/Tiny and amazon/Other: different items (ASIN prefixes), the same 80 reviewers,
    and attribute ids that collide across domains while meaning different things."""
    root = tmp_path_factory.mktemp("domains")
    write_domain(root / "amazon", "Tiny", seed=7, asin_prefix="B", titles=("red lipstick", "hiking boots"))
    write_domain(root / "amazon", "Other", seed=8, asin_prefix="S", titles=("camping tent", "lip balm"))
    return root


def test_text_vectors_come_from_the_offline_encoder_and_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may be fetched from the hub
    texts = ["red lipstick", "crimson lip colour", "hiking boots", ""]
    vectors = encode_texts(texts, cache_dir=tmp_path)
    assert vectors.shape == (4, TEXT_DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors[:3], axis=1), 1.0, atol=1e-5)
    assert not vectors[3].any()  # an empty text is the zero vector
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2  # meaning, not spelling
    assert len(list(tmp_path.glob("*.npy"))) == 1
    np.testing.assert_array_equal(encode_texts(texts, cache_dir=tmp_path), vectors)
    table = item_text_table(texts[:2], cache_dir=tmp_path)
    assert table.shape == (3, TEXT_DIM) and not table[0].any()


def test_held_out_items_occur_only_as_test_targets(tiny):
    data, held = hold_out_items(tiny, 0.2, seed=0)
    assert held.sum() == round(0.2 * tiny.n_items) and not held[0]
    assert data.item_vocab == tiny.item_vocab  # the catalogue still knows them
    for seq in data.items:
        assert not held[seq[:-1]].any()
    known = data.item_known()
    assert not known[held].any()
    targets_held = sum(bool(held[seq[-1]]) for seq in data.items)
    assert targets_held > 0


@pytest.mark.parametrize("text_k", [0, 3])
def test_unseen_items_are_scored_from_their_content_and_look_alikes(tiny, text_k):
    """An item no training event touches has no id part of its own: its row is its content
    (attributes, text) plus the item graph's share, which for it can only come from its title
    look-alikes (text edges), never from transitions it does not have."""
    data, held = hold_out_items(tiny, 0.2, seed=0)
    result = train(data, ModelConfig(**TEXT, graph_text_k=text_k), TrainConfig(epochs=1, device="cpu"), progress=False)
    model = result.model
    with torch.no_grad():
        table, own = model.item_table(), model._content_table()
        content = model.tag_emb(model.item_tags) + model.text_proj(model.item_text)
        share = torch.sparse.mm(model.graph, own)
    cold = torch.from_numpy(held)
    torch.testing.assert_close(own[cold], content[cold])  # no id part
    assert (own[~cold][1:] - content[~cold][1:]).abs().sum() > 0  # warm items have one
    torch.testing.assert_close(table[cold], content[cold] + model.cfg.graph_weight * share[cold])
    borrowed = share[cold].abs().sum(dim=1) > 0
    assert borrowed.all() if text_k else not borrowed.any()


def test_id_dropout_hides_ids_in_training_only(tiny):
    model = ShiftRec(ModelConfig(**TEXT, n_items=tiny.n_items, n_tags=tiny.n_tags, id_dropout=0.5),
                     torch.from_numpy(tiny.item_tags), torch.from_numpy(item_text_table(tiny.item_titles)))
    with torch.no_grad():
        content = model.tag_emb(model.item_tags) + model.text_proj(model.item_text)
        model.train()
        hidden = ((model.item_table() - content).abs().sum(dim=1) == 0)[1:]
        assert 0.3 < hidden.float().mean() < 0.7  # about half the items lose their id part
        model.eval()
        assert ((model.item_table() - content).abs().sum(dim=1)[1:] > 0).all()  # none when serving


def test_a_user_sample_trains_on_those_users_only(tiny):
    data = sample_train_users(tiny, 0.25, seed=3)
    assert data.train_users.sum() == 20
    inputs, _ = training_arrays(data, 12)
    assert len(inputs.items) == sum(1 for u in range(len(data.users))
                                    if data.train_users[u] and data.train_end(u) >= 2)
    assert set(data.item_known().nonzero()[0]) <= set(tiny.item_known().nonzero()[0])


def test_train_since_keeps_older_events_as_context(tiny):
    cut = int(np.median(np.concatenate(tiny.times)))
    inputs, targets = training_arrays(tiny.with_train_since(cut), 12)
    newer = [tiny.items[u][1:tiny.train_end(u)][tiny.times[u][1:tiny.train_end(u)] >= cut]
             for u in range(len(tiny.users))]
    assert (targets > 0).sum() == sum(len(x) for x in newer) > 0  # only the newer targets count
    assert len(targets) == sum(1 for x in newer if len(x))  # users with none are left out
    assert (inputs.items > 0).sum() > (targets > 0).sum()  # older events still feed the inputs
    before = events_before(tiny, cut)
    assert all(len(t) and t.max() < cut for t in before.times)
    assert before.last_timestamp() < cut <= tiny.last_timestamp()


def test_cross_domain_fine_tune_carries_the_encoder_but_not_the_domain_ids(two_domains, tmp_path):
    source = load_files(f"s3rec:{two_domains / 'amazon' / 'Other'}")
    target = load_files(f"s3rec:{two_domains / 'amazon' / 'Tiny'}")
    src_models, dst_models = tmp_path / "src", tmp_path / "dst"
    main(data=source, out=str(src_models),
        run=RunOptions(overrides={**TINY, "epochs": 2}, device="cpu", progress=False, version="pretrained",
            pretrain=True))
    parent = load_weights(src_models)
    assert parent["pretrain"] and parent["model_config"]["use_text"]  # --pretrain turns text on
    # lr 0: whatever the child holds is what it was initialised with
    report = main(data=target, out=str(dst_models),
        run=RunOptions(overrides={"epochs": 1, "lr": 0.0}, device="cpu", progress=False, version="child",
            finetune_from=str(src_models)))
    assert report["train_since"] is None  # another domain: all of its training events count
    child = load_weights(dst_models)
    for name in ("blocks.0.attn.qkv.weight", "text_proj.weight", "type_emb.weight", "time_bias.weight"):
        torch.testing.assert_close(child["state_dict"][name], parent["state_dict"][name])
    assert not child["state_dict"]["item_emb.weight"].any()  # no item in common: ids start at zero
    # the same tag names ("attr:1") mean other things in the other domain: not carried
    shared_tags = set(parent["tag_vocab"]) & set(child["tag_vocab"])
    assert shared_tags
    t = child["tag_vocab"].index(min(shared_tags)) + 1
    p = parent["tag_vocab"].index(min(shared_tags)) + 1
    assert not torch.equal(child["state_dict"]["tag_emb.weight"][t], parent["state_dict"]["tag_emb.weight"][p])
    manifest = pkg.load_manifest(dst_models / "child")
    assert manifest.parent_version == "pretrained"
    assert manifest.config["text_encoder"] == "all-MiniLM-L6-v2"


def test_temporal_fine_tune_learns_from_newer_events_and_new_items_start_from_content(tiny, tmp_path):
    cut = int(np.quantile(np.concatenate(tiny.times), 0.7))
    models = tmp_path / "models"
    main(data=events_before(tiny, cut), out=str(models),
        run=RunOptions(overrides={**TEXT, "epochs": 1}, device="cpu", progress=False, version="before"))
    parent = load_weights(models)
    report = main(data=tiny, out=str(models),
        run=RunOptions(overrides={"epochs": 1, "lr": 0.0}, device="cpu", progress=False, version="after",
            finetune_from=str(models), new_events_only=True))
    assert report["train_since"] == parent["data_until"] + 1
    assert pkg.load_manifest(models / "after").parent_version == "before"
    child = load_weights(models)
    known_before = {parent["item_vocab"][i - 1] for i in np.flatnonzero(parent["state_dict"]["id_mask"][:, 0])}
    rows = child["state_dict"]["item_emb.weight"]
    for i, item in enumerate(child["item_vocab"], start=1):
        if item in known_before:
            torch.testing.assert_close(rows[i], parent["state_dict"]["item_emb.weight"][parent["item_vocab"].index(item) + 1])
        else:
            assert not rows[i].any()  # new since the parent: starts from its content


def test_temporal_fine_tune_uses_every_event_by_default(tiny, tmp_path):
    cut = int(np.quantile(np.concatenate(tiny.times), 0.7))
    models = tmp_path / "models"
    main(data=events_before(tiny, cut), out=str(models),
        run=RunOptions(overrides={**TINY, "epochs": 1}, device="cpu", progress=False, version="before"))
    report = main(data=tiny, out=str(models),
        run=RunOptions(overrides={"epochs": 1}, device="cpu", progress=False, version="after",
            finetune_from=str(models)))
    assert report["train_since"] is None
    assert pkg.load_manifest(models / "after").parent_version == "before"


def test_the_transfer_benchmark_runs_and_resumes(two_domains, tmp_path, capsys):
    from training.experiments import transfer

    times = np.concatenate(load_files(f"s3rec:{two_domains / 'amazon' / 'Tiny'}").times)
    args = ["--datasets", str(two_domains), "--source", "Other", "--target", "Tiny",
            "--fractions", "0.25,1", "--seeds", "1", "--full-seeds", "1", "--max-minutes", "0.001",
            "--pretrain-minutes", "0.001", "--full-max-minutes", "0.001", "--cut", str(int(np.median(times))), "--jobs", "2",
            "--work", str(tmp_path / "work"), "--out", str(tmp_path / "transfer.json")]
    assert transfer.main(args) == 0
    summary = json.loads((tmp_path / "transfer.json").read_text())
    fractions = {row["fraction"]: row for row in summary["cross_domain"]}
    assert fractions[0.25]["scratch"]["train_users"] == 20
    assert fractions[1.0]["finetune"]["train_users"] == 80
    for row in fractions.values():
        for arm in ("scratch", "finetune"):
            assert 0 <= row[arm]["NDCG@10_mean"] <= 1 and row[arm]["seeds"] == 1
    cold = summary["cold_start"]
    assert cold["text"]["users"] == cold["text-id-dropout"]["users"] == cold["default"]["users"] > 0
    assert summary["temporal"]["new_events_only"]["train_users"] < summary["temporal"]["all_events"]["train_users"]
    shared = summary["shared_shoppers"]
    assert shared["shoppers"] == 80  # every reviewer is in both tiny domains
    assert 0 <= shared["with_source_history"]["NDCG@10"] <= 1
    table = capsys.readouterr().out
    assert "cross-domain" in table and "cold-start" in table and "temporal" in table
    runs = sorted((tmp_path / "work" / "runs").glob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in runs]
    assert transfer.main(args) == 0  # resumes: every run is kept, none is repeated
    assert [p.stat().st_mtime_ns for p in runs] == stamps
