"""InferenceService over real gRPC with a real FeatureService and a model trained from the store:
recommendations, probabilities, profiles, fallbacks, bad input and hot reload."""

import json
import shutil
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.features.server import build_server as build_features
from services.inference.runtime import ModelRuntime, PackageError, Step
from services.inference.server import SERVICE_NAME
from services.inference.server import build_server as build_inference
from shared import model_package as pkg
from shared.clients import open_channel
from shared.settings import Settings
from shared.store import open_store
from shiftrec.v1 import inference_pb2, inference_pb2_grpc
from tests.integration.inference.conftest import Pipeline, train_package


def settings_for(pipeline: Pipeline, model_dir: Path, features_port: int, **extra: object) -> Settings:
    return Settings(database_url=pipeline.database_url, model_dir=str(model_dir),
                    features_target=f"127.0.0.1:{features_port}", model_poll_seconds=0.2, **extra)


@pytest.fixture
def features(serve_in_process, pipeline):
    return serve_in_process(lambda: build_features(Settings(database_url=pipeline.database_url), port=0))


@pytest.fixture
def inference(serve_in_process, pipeline, features):
    server = serve_in_process(lambda: build_inference(settings_for(pipeline, pipeline.model_dir, features.port), port=0))
    with open_channel(f"127.0.0.1:{server.port}") as channel:
        yield inference_pb2_grpc.InferenceServiceStub(channel), server


def history_items(pipeline: Pipeline, user: str) -> list[str]:
    store = open_store(pipeline.database_url, migrate=False)
    items = [h.event.item_id for h in store.recent_history(user, 10_000)]
    store.engine.dispose()
    return items


def test_recommend_excludes_seen_and_reports_model(inference, pipeline) -> None:
    stub, _ = inference
    user = pipeline.users[0]
    response, call = stub.Recommend.with_call(inference_pb2.RecommendRequest(user_id=user, k=10), timeout=5)
    assert response.strategy == inference_pb2.STRATEGY_MODEL
    assert response.model_version == "v1"
    assert len(response.items) == 10
    seen = set(history_items(pipeline, user))
    assert not seen & {i.item_id for i in response.items}
    scores = [i.score for i in response.items]
    assert scores == sorted(scores, reverse=True)
    assert dict(call.trailing_metadata())["shiftrec-execution-provider"] == "CPUExecutionProvider"


def test_recommend_honours_include_seen_excludes_and_category(inference, pipeline) -> None:
    stub, _ = inference
    user = pipeline.users[1]
    everything = stub.Recommend(inference_pb2.RecommendRequest(user_id=user, k=1000, include_seen=True), timeout=5)
    assert len(everything.items) == len(pipeline.simulator.catalogue())
    first = everything.items[0].item_id
    excluded = stub.Recommend(inference_pb2.RecommendRequest(
        user_id=user, k=5, include_seen=True, exclude_item_ids=[first]), timeout=5)
    assert first not in {i.item_id for i in excluded.items}
    assert [i.item_id for i in excluded.items] == [i.item_id for i in everything.items[1:6]]
    only = stub.Recommend(inference_pb2.RecommendRequest(user_id=user, k=7, category="fragrance"), timeout=5)
    assert len(only.items) == 7
    assert all(i.item_id.startswith("fragrance-") for i in only.items)


def test_users_without_usable_history_get_recent_popular(inference, pipeline) -> None:
    stub, _ = inference
    response = stub.Recommend(inference_pb2.RecommendRequest(user_id="never-seen", k=5), timeout=5)
    assert response.strategy == inference_pb2.STRATEGY_RECENT_POPULAR
    assert len(response.items) == 5
    manifest = pkg.load_manifest(pkg.resolve_package(pipeline.model_dir))
    assert [i.item_id for i in response.items] == manifest.popular_items[:5]


def test_score_items_gives_probabilities_and_reports_unknown(inference, pipeline) -> None:
    stub, _ = inference
    catalogue = [i.item_id for i in pipeline.simulator.catalogue()]
    response = stub.ScoreItems(inference_pb2.ScoreItemsRequest(
        user_id=pipeline.users[2], item_ids=[catalogue[0], "no-such-item", catalogue[5]]), timeout=5)
    assert [i.item_id for i in response.items] == [catalogue[0], catalogue[5]]
    assert all(0.0 <= i.probability <= 1.0 for i in response.items)
    assert list(response.unknown_item_ids) == ["no-such-item"]
    assert response.model_version == "v1"
    # The model's top recommendation is at least as likely as a random catalogue item.
    top = stub.Recommend(inference_pb2.RecommendRequest(user_id=pipeline.users[2], k=1), timeout=5).items[0]
    both = stub.ScoreItems(inference_pb2.ScoreItemsRequest(user_id=pipeline.users[2], item_ids=[top.item_id]), timeout=5)
    assert both.items[0].probability >= min(i.probability for i in response.items)


def test_interest_profile_shapes(inference, pipeline) -> None:
    stub, _ = inference
    profile = stub.GetInterestProfile(inference_pb2.GetInterestProfileRequest(user_id=pipeline.users[3]), timeout=5)
    assert sum(c.weight for c in profile.long_term) == pytest.approx(1.0, abs=1e-5)
    assert sum(c.weight for c in profile.recent) == pytest.approx(1.0, abs=1e-5)
    assert 0.0 <= profile.drift_score <= 1.0 and 0.0 <= profile.model_shift <= 1.0
    assert profile.model_version == "v1"


def test_interest_profile_predicts_the_move_and_the_next_categories(inference, pipeline) -> None:  # type: ignore[no-untyped-def]
    stub, server = inference
    runtime = server.registry.current()
    categories = set(runtime.categories)
    for user in pipeline.users[:20]:
        profile = stub.GetInterestProfile(inference_pb2.GetInterestProfileRequest(user_id=user), timeout=5)
        assert 0.0 <= profile.shift_probability <= 1.0
        assert profile.shift_window == 5 == runtime.shift_window
        weights = [c.weight for c in profile.next_categories]
        assert 1 <= len(weights) <= 10 and weights == sorted(weights, reverse=True)
        assert {c.category for c in profile.next_categories} <= categories
        # the served numbers are the package's outputs for this history, as the harness evaluates them
        store = open_store(pipeline.database_url, migrate=False)
        steps = [Step(h.event.item_id, h.event.event_type, h.event.occurred_at_us)
                 for h in store.recent_history(user, 200)]
        store.engine.dispose()
        shift, next_categories = runtime.run_shift(runtime.encode([steps]))
        assert profile.shift_probability == pytest.approx(float(shift[0]), abs=1e-6)
        assert weights[0] == pytest.approx(float(next_categories[0].max()), abs=1e-6)


def test_a_package_whose_shift_outputs_disagree_with_its_manifest_is_refused(pipeline, tmp_path) -> None:  # type: ignore[no-untyped-def]
    source = pkg.resolve_package(pipeline.model_dir)
    assert ModelRuntime(source, device="cpu").check_parity() <= 1e-4  # the published package holds parity
    for name in pkg.SHIFT_OUTPUT_NAMES:
        bad = tmp_path / name
        shutil.copytree(source, bad)
        manifest = json.loads((bad / pkg.MANIFEST_FILE).read_text())
        sample = np.asarray(manifest["parity_sample"][name])
        manifest["parity_sample"][name] = (sample + 0.01).tolist()
        (bad / pkg.MANIFEST_FILE).write_text(json.dumps(manifest))
        with pytest.raises(PackageError, match=f"parity: {name}"):
            ModelRuntime(bad, device="cpu").check_parity()


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda s: s.Recommend(inference_pb2.RecommendRequest(user_id="", k=5)), "user_id"),
        (lambda s: s.Recommend(inference_pb2.RecommendRequest(user_id="u", k=0)), "k"),
        (lambda s: s.Recommend(inference_pb2.RecommendRequest(user_id="u", k=-3)), "k"),
        (lambda s: s.Recommend(inference_pb2.RecommendRequest(user_id="u", k=1001)), "k"),
        (lambda s: s.ScoreItems(inference_pb2.ScoreItemsRequest(user_id="u")), "item_ids"),
        (lambda s: s.ScoreItems(inference_pb2.ScoreItemsRequest(user_id="u", item_ids=["i"] * 1001)), "item_ids"),
        (lambda s: s.ScoreItems(inference_pb2.ScoreItemsRequest(user_id="u" * 129, item_ids=["i"])), "user_id"),
        (lambda s: s.GetInterestProfile(inference_pb2.GetInterestProfileRequest(user_id="u", recent_window=-1)),
         "recent_window"),
    ],
)
def test_bad_requests_are_invalid_argument(inference, call, field) -> None:
    stub, _ = inference
    with pytest.raises(grpc.RpcError) as caught:
        call(stub)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"{field}: ")


def test_features_down_falls_back_within_the_deadline(serve_in_process, pipeline) -> None:
    from app.processes import free_port

    dead = free_port()  # nothing listens there
    server = serve_in_process(lambda: build_inference(
        settings_for(pipeline, pipeline.model_dir, dead, features_timeout_seconds=0.2), port=0))
    with open_channel(f"127.0.0.1:{server.port}") as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        start = time.monotonic()
        response = stub.Recommend(inference_pb2.RecommendRequest(user_id=pipeline.users[0], k=5), timeout=5)
        assert time.monotonic() - start < 1.5
        assert response.strategy == inference_pb2.STRATEGY_FALLBACK_FEATURES_UNAVAILABLE
        assert len(response.items) == 5
        with pytest.raises(grpc.RpcError) as caught:
            stub.ScoreItems(inference_pb2.ScoreItemsRequest(user_id="u", item_ids=["x"]), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.1)


def test_no_model_then_hot_reload_then_a_corrupt_package_is_refused(serve_in_process, pipeline, features, tmp_path) -> None:
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    server = serve_in_process(lambda: build_inference(settings_for(pipeline, model_dir, features.port), port=0))
    with open_channel(f"127.0.0.1:{server.port}") as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)

        def status() -> int:
            return health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5).status

        assert status() == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as caught:
            stub.Recommend(inference_pb2.RecommendRequest(user_id="u", k=3), timeout=5)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        # Publish v1 (a copy of the trained package): loaded, SERVING.
        source = pkg.resolve_package(pipeline.model_dir)
        shutil.copytree(source, model_dir / "v1")
        (model_dir / pkg.LATEST_FILE).write_text("v1\n")
        wait_for(lambda: status() == health_pb2.HealthCheckResponse.SERVING)
        request = inference_pb2.RecommendRequest(user_id=pipeline.users[0], k=3)
        assert stub.Recommend(request, timeout=5).model_version == "v1"

        # A corrupt v2: refused, counted, v1 keeps serving.
        shutil.copytree(source, model_dir / "v2")
        (model_dir / "v2" / pkg.MODEL_FILE).write_bytes(b"not an onnx model")
        manifest = (model_dir / "v2" / pkg.MANIFEST_FILE)
        manifest.write_text(manifest.read_text().replace('"version": "v1"', '"version": "v2"'))
        (model_dir / pkg.LATEST_FILE).write_text("v2\n")
        registry = server.registry
        wait_for(lambda: registry.stats.load_failures == 1)
        assert registry.stats.refused_versions == ["v2"]
        assert stub.Recommend(request, timeout=5).model_version == "v1"
        assert status() == health_pb2.HealthCheckResponse.SERVING

        # A good v3 trained on the same store: swapped in.
        train_package(pipeline.database_url, model_dir, epochs=1, version="v3")
        wait_for(lambda: stub.Recommend(request, timeout=5).model_version == "v3")
        assert registry.stats.loads == 2
