"""Real time, end to end: a shopper with a stable history gets recommendations; a burst of
events in another category is ingested; with no retraining, the next Recommend moves toward that
category, GetInterestProfile shows it rising and the drift score up, and the model's predicted
next category moves from the old category to the new one."""

import time
from collections import Counter

import pytest

from app.importer import import_records
from app.processes import run_cli as shiftrec
from app.processes import running_stack
from app.simulator import DAY_US, MINUTE_US, VIEW, StorefrontSimulator
from shared.clients import open_channel
from shared.store import EventRecord
from shiftrec.v1 import inference_pb2, inference_pb2_grpc
from tests.e2e.services import write_config

MODEL = {"dim": 32, "n_layers": 1, "max_len": 20}


def categories_of(items: list[str]) -> Counter[str]:
    return Counter(item.rsplit("-", 1)[0] for item in items)


def test_a_burst_in_a_new_category_moves_recommendations_and_profile(tmp_path) -> None:
    pytest.importorskip("torch")
    simulator = StorefrontSimulator(seed=11, items_per_category=20)
    now = time.time_ns() // 1_000
    shoppers = simulator.population(300, (10, 30), now - 20 * DAY_US, now - DAY_US)
    url, models = f"sqlite:///{tmp_path / 'store.db'}", tmp_path / "models"
    with running_stack(url, models) as stack:
        report = import_records(stack.ingestion.target, [e for s in shoppers for e in s.events],
                                simulator.catalogue(), progress=False)
        assert report.rejected == 0
        shiftrec("train", "--database-url", url, "--out", str(models), "--epochs", "8", "--device", "cpu",
                 "--config", str(write_config(tmp_path / "model.json", MODEL)))
        stack.inference.wait_serving()

        # The most single-minded shopper: the largest share of events in one category.
        def focus(s):
            return categories_of([e.item_id for e in s.events]).most_common(1)[0][1] / len(s.events)

        shopper = max(shoppers, key=focus)
        home = categories_of([e.item_id for e in shopper.events]).most_common(1)[0][0]
        seen_categories = set(categories_of([e.item_id for e in shopper.events]))
        new = next(c for c in ("fragrance", "tools", "mens", "bath", "nails", "makeup", "skincare", "haircare")
                   if c not in seen_categories)

        with open_channel(stack.inference.target) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)

            def snapshot():
                recs = stub.Recommend(inference_pb2.RecommendRequest(user_id=shopper.user_id, k=10), timeout=5)
                profile = stub.GetInterestProfile(
                    inference_pb2.GetInterestProfileRequest(user_id=shopper.user_id, recent_window=8), timeout=5)
                return categories_of([i.item_id for i in recs.items]), profile, recs.model_version

            before, profile_before, version = snapshot()
            burst = [
                EventRecord(f"burst-{n}", shopper.user_id, simulator.items[new][n].item_id, VIEW,
                            now + n * MINUTE_US // 10, "demo-store")
                for n in range(8)
            ]
            assert import_records(stack.ingestion.target, burst, progress=False).accepted == 8
            after, profile_after, version_after = snapshot()

    assert version_after == version  # no retraining in between
    assert before[home] >= 5 and before[new] <= 2
    assert after[new] >= before[new] + 4
    assert profile_after.rising[0].category == new
    assert profile_after.drift_score > profile_before.drift_score + 0.3
    assert {c.category: c.weight for c in profile_after.recent}[new] > 0.9
    # the model's prediction moved with the shopper: home was the most likely next category, now
    # the new one is; P(move) is a calibrated probability over the model's window
    assert profile_before.next_categories[0].category == home
    assert profile_after.next_categories[0].category == new
    assert {c.category: c.weight for c in profile_after.next_categories}[new] > 0.5
    for profile in (profile_before, profile_after):
        assert 0.0 < profile.shift_probability < 1.0 and profile.shift_window == 5
