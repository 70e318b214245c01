"""A few hundred real Beauty shoppers through the whole pipeline: import with the last
interaction held out, train from the store, serve; the metrics computed from Recommend
responses equal the trainer's offline figures for the same package (no train/serve skew).

Only shoppers whose held-out item the model knows are compared: an item seen nowhere but in
held-out positions is outside the model's vocabulary, so the server can never return it, while
the offline harness would drop that event and score the user on an earlier one.
"""

import dataclasses
import math

import grpc
import numpy as np
import pytest

from app.processes import run_cli as shiftrec
from app.processes import running_stack
from shared import model_package as pkg
from shared.clients import open_channel
from shared.datasets import read_s3rec
from shiftrec.v1 import inference_pb2, inference_pb2_grpc
from tests.conftest import require_datasets
from tests.e2e.services import write_config

N_USERS = 300
TINY = {"dim": 32, "n_layers": 1, "max_len": 20}


def write_subset(source, domain: str, users: int, out) -> None:
    """The first `users` users of a domain in the same file format (items/attributes kept)."""
    for suffix in (".txt", "_timestamps.txt"):
        lines = (source / f"{domain}{suffix}").read_text().splitlines()[:users]
        (out / f"{domain}{suffix}").write_text("\n".join(lines) + "\n")
    for suffix in ("_items.tsv", "_users.tsv", "_item2attributes.json"):
        (out / f"{domain}{suffix}").write_bytes((source / f"{domain}{suffix}").read_bytes())


def test_served_metrics_equal_offline_metrics(tmp_path) -> None:
    pytest.importorskip("torch")
    from training.data import HOLDOUT_TEST, load_files
    from training.evaluation import evaluate_package

    write_subset(require_datasets() / "amazon", "Beauty", N_USERS, tmp_path)
    domain = read_s3rec(tmp_path, "Beauty")
    url, models = f"sqlite:///{tmp_path / 'store.db'}", tmp_path / "models"
    with running_stack(url, models) as stack:
        shiftrec("import", "s3rec", "--data-dir", str(tmp_path), "--domain", "Beauty", "--quiet",
                 "--holdout-last", "1", "--target", stack.ingestion.target)
        shiftrec("train", "--database-url", url, "--out", str(models), "--epochs", "3", "--device", "cpu",
                 "--config", str(write_config(tmp_path / "tiny.json", TINY)))
        stack.inference.wait_serving()
        vocab = set(pkg.load_manifest(pkg.resolve_package(models)).item_vocab)
        hits10, ndcg10, users = 0.0, 0.0, 0
        with open_channel(stack.inference.target) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            for user, items in domain.sequences.items():
                target = domain.item_names[items[-1]]
                if len(items) < 3 or target not in vocab:
                    continue
                response = stub.Recommend(inference_pb2.RecommendRequest(
                    user_id=domain.user_names[user], k=10), timeout=10)
                assert response.strategy == inference_pb2.STRATEGY_MODEL
                ranked = [i.item_id for i in response.items]
                users += 1
                if target in ranked:
                    hits10 += 1
                    ndcg10 += 1 / math.log2(ranked.index(target) + 2)
            with pytest.raises(grpc.RpcError):  # the stack is real: bad input is still refused
                stub.Recommend(inference_pb2.RecommendRequest(user_id="", k=10), timeout=5)
    full = load_files(f"s3rec:{tmp_path / 'Beauty'}", holdout=HOLDOUT_TEST)
    keep = [u for u, seq in enumerate(full.items) if full.item_vocab[seq[-1] - 1] in vocab]
    known = dataclasses.replace(
        full, users=[full.users[u] for u in keep], items=[full.items[u] for u in keep],
        types=[full.types[u] for u in keep], times=[full.times[u] for u in keep])
    offline = evaluate_package(str(pkg.resolve_package(models)), known)
    assert users == len(keep) >= 100
    assert hits10 / users == pytest.approx(offline["HR@10"], abs=1e-3)
    assert ndcg10 / users == pytest.approx(offline["NDCG@10"], abs=1e-3)
    assert np.isfinite(offline["NDCG@10"])
