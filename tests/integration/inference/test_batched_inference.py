"""Dynamic batching with the real model: concurrent requests, over gRPC and at the runtime,
get what they get one at a time; a hot swap ends the old model's batching."""

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from prometheus_client import REGISTRY

from services.inference.registry import ModelRegistry
from services.inference.runtime import ModelRuntime, Step
from shared import model_package as pkg
from shared.clients import open_channel
from shared.store import open_store
from shiftrec.v1 import inference_pb2, inference_pb2_grpc
from tests.integration.inference.conftest import Pipeline, train_package
from tests.integration.inference.test_inference_service import features, settings_for  # noqa: F401


def histories(pipeline: Pipeline, n: int) -> list[list[Step]]:
    store = open_store(pipeline.database_url, migrate=False)
    out = [[Step(h.event.item_id, h.event.event_type, h.event.occurred_at_us)
            for h in reversed(store.recent_history(user, 50))] for user in pipeline.users[:n]]
    store.engine.dispose()
    return out


def batched_rows() -> float:
    return REGISTRY.get_sample_value("shiftrec_inference_batch_rows_sum") or 0.0


def batched_calls() -> float:
    return REGISTRY.get_sample_value("shiftrec_inference_batch_rows_count") or 0.0


def test_concurrent_runs_equal_runs_alone(pipeline) -> None:
    package = pkg.resolve_package(pipeline.model_dir)
    alone = ModelRuntime(package, device="cpu")
    batched = ModelRuntime(package, device="cpu", batch_max=16)
    feeds = [alone.encode([h]) for h in histories(pipeline, 64)]
    expected = [alone.run(f) for f in feeds]
    rows0, calls0 = batched_rows(), batched_calls()
    start = threading.Barrier(16)

    def one(i):
        if i < 16:
            start.wait()
        return batched.run(feeds[i])

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(one, range(len(feeds))))
    for want, have in zip(expected, got, strict=True):
        for a, b in zip(want, have, strict=True):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, atol=1e-5)
    assert batched_rows() - rows0 == 64
    assert batched_calls() - calls0 < 64  # some calls were shared
    with ThreadPoolExecutor(16) as pool:
        scores = list(pool.map(batched.run_scores, feeds))  # Recommend's output set
    for want, have in zip(expected, scores, strict=True):
        np.testing.assert_allclose(want[0], have, atol=1e-5)
    batched.close()


def test_concurrent_recommends_over_grpc_equal_sequential_ones(serve_in_process, pipeline, features) -> None:  # noqa: F811
    from services.inference.server import build_server

    server = serve_in_process(lambda: build_server(
        settings_for(pipeline, pipeline.model_dir, features.port, inference_batch_max=16, inference_workers=16),
        port=0))
    users = pipeline.users[:48]
    with open_channel(f"127.0.0.1:{server.port}") as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)

        def ask(user):
            reply = stub.Recommend(inference_pb2.RecommendRequest(user_id=user, k=10), timeout=10)
            return [i.item_id for i in reply.items], [i.score for i in reply.items]

        sequential = [ask(u) for u in users]
        rows0, calls0 = batched_rows(), batched_calls()
        with ThreadPoolExecutor(16) as pool:
            concurrent = list(pool.map(ask, users * 2))
    for (ids, scores), (want_ids, want_scores) in zip(concurrent, sequential * 2, strict=True):
        assert ids == want_ids
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    # Whether these calls shared a model run depends on the box: with a 1 ms run and a loaded box
    # each client's next request can find a free slot (fresh-clone CI beside a training run: 96
    # runs for 96 requests). That calls are gathered is shown where it can be forced, in process
    # (test_concurrent_runs_equal_runs_alone); here each request is one row through the batcher.
    assert batched_rows() - rows0 == 96
    assert batched_calls() - calls0 <= 96


def test_a_swap_ends_the_old_models_batching(pipeline, tmp_path) -> None:
    model_dir = tmp_path / "models"
    shutil.copytree(pipeline.model_dir, model_dir)
    registry = ModelRegistry(model_dir, device="cpu", batch_max=8)
    assert registry.refresh()
    old = registry.current()
    train_package(pipeline.database_url, model_dir, epochs=1, version="v2")
    assert registry.refresh()
    assert registry.current() is not old
    assert not any(b.alive for b in old._batchers.values())
    feeds = old.encode(histories(pipeline, 1))
    assert old.run(feeds)[0].shape == (1, len(old.item_vocab))  # a request still on it is answered
    registry.current().close()
