"""Temporal fine-tuning, end to end: the serving model is fine-tuned on the store's newest events
(`shiftrec train --init-from MODEL_DIR`) and the running inference service swaps to it while
it keeps answering; an item added to the catalogue after the first model is known to the
second, scored through its content."""

import threading
import time

import grpc
import pytest

from app.importer import import_records
from app.processes import run_cli as shiftrec
from app.processes import running_stack
from app.simulator import DAY_US, MINUTE_US, VIEW, StorefrontSimulator
from shared.clients import open_channel
from shared.store import EventRecord, ItemRecord
from shiftrec.v1 import inference_pb2, inference_pb2_grpc
from tests.e2e.services import write_config

MODEL = {"dim": 32, "n_layers": 1, "max_len": 20, "use_text": True}
NEW_ITEM = ItemRecord(item_id="skincare-new-serum", title="Skincare vitamin C serum, new", category="skincare",
                      tags=("skincare",))


def test_a_fine_tuned_package_is_served_live(tmp_path) -> None:
    pytest.importorskip("torch")
    simulator = StorefrontSimulator(seed=5, items_per_category=20)
    now = time.time_ns() // 1_000
    shoppers = simulator.population(200, (8, 20), now - 20 * DAY_US, now - 2 * DAY_US)
    url, models = f"sqlite:///{tmp_path / 'store.db'}", tmp_path / "models"
    config = str(write_config(tmp_path / "model.json", MODEL))
    train = ("train", "--database-url", url, "--out", str(models), "--init-from", str(models),
             "--device", "cpu", "--config", config)
    env = {"SHIFTREC_TEXT_CACHE_DIR": str(tmp_path / "text-cache")}
    with running_stack(url, models) as stack:
        assert import_records(stack.ingestion.target, [e for s in shoppers for e in s.events],
                              simulator.catalogue(), progress=False).rejected == 0
        shiftrec(*train, "--epochs", "3", "--version", "v1", env=env)  # nothing there yet: from scratch
        stack.inference.wait_serving()

        with open_channel(stack.inference.target) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            user = shoppers[0].user_id
            first = stub.ScoreItems(inference_pb2.ScoreItemsRequest(user_id=user, item_ids=[NEW_ITEM.item_id]),
                                    timeout=5)
            assert first.model_version == "v1" and list(first.unknown_item_ids) == [NEW_ITEM.item_id]

            # traffic throughout the fine-tune and the swap
            seen_versions: list[str] = []
            failures: list[grpc.RpcError] = []
            stop = threading.Event()

            def traffic() -> None:
                while not stop.is_set():
                    try:
                        reply = stub.Recommend(inference_pb2.RecommendRequest(user_id=user, k=10), timeout=5)
                        seen_versions.append(reply.model_version)
                    except grpc.RpcError as exc:
                        failures.append(exc)
                    time.sleep(0.02)

            sender = threading.Thread(target=traffic)
            sender.start()
            try:
                # newer activity (three events each: the last is a serving model's validation
                # target), on a product that came into the catalogue after v1
                skincare = simulator.items["skincare"]
                fresh = [EventRecord(f"fresh-{n}-{k}", s.user_id, item.item_id, VIEW,
                                     now - DAY_US + (3 * n + k) * MINUTE_US, "demo-store")
                         for n, s in enumerate(shoppers[:60])
                         for k, item in enumerate((skincare[n % 20], NEW_ITEM, skincare[(n + 1) % 20]))]
                report = import_records(stack.ingestion.target, fresh, [NEW_ITEM], progress=False)
                assert report.accepted == len(fresh)
                shiftrec(*train, "--epochs", "2", "--version", "v2", env=env)
                deadline = time.monotonic() + 30
                while (not seen_versions or seen_versions[-1] != "v2") and time.monotonic() < deadline:
                    time.sleep(0.1)
            finally:
                stop.set()
                sender.join()
            after = stub.ScoreItems(inference_pb2.ScoreItemsRequest(user_id=user, item_ids=[NEW_ITEM.item_id]),
                                    timeout=5)

    from shared import model_package as pkg
    from training.export import load_weights

    v1, v2 = load_weights(models / "v1"), load_weights(models / "v2")
    manifest = pkg.load_manifest(models / "v2")
    assert manifest.parent_version == "v1"
    assert manifest.config["train_since"] is None  # every event, the newer ones included
    assert NEW_ITEM.item_id in manifest.item_vocab and NEW_ITEM.item_id not in v1["item_vocab"]
    assert v2["data_until"] > v1["data_until"]
    assert failures == []  # the swap happened under traffic without a failed request
    assert seen_versions[0] == "v1" and seen_versions[-1] == "v2"
    assert set(seen_versions) == {"v1", "v2"}
    assert after.model_version == "v2" and not after.unknown_item_ids
    assert 0.0 < after.items[0].probability < 1.0
