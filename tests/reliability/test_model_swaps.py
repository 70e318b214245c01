"""Twenty model swaps under load, one of them a corrupt package: no request fails, the corrupt
package is refused (the previous model keeps serving), and the model version each caller sees
only moves forward in publish order."""

import itertools
import random
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest

from services.features.server import build_server as build_features
from services.inference.server import build_server as build_inference
from shared.clients import open_channel
from shared.settings import Settings
from shiftrec.v1 import inference_pb2, inference_pb2_grpc
from tests.reliability.helpers import LEDGER, publish_copy, wait_until

SWAPS = 20
CORRUPT_AT = 13  # the 13th publication is a broken package


@pytest.mark.timeout(300)
def test_twenty_swaps_under_load_one_corrupt(serve_in_process, tiny_world, tmp_path: Path) -> None:
    url = tiny_world.sqlite_copy(tmp_path)
    model_dir = tmp_path / "models"
    versions = [f"v{n:03d}" for n in range(SWAPS + 1)]  # v000 serves first, then 20 publications
    order = {v: n for n, v in enumerate(versions)}
    corrupt = versions[CORRUPT_AT]
    publish_copy(tiny_world.package, model_dir, versions[0])
    features = serve_in_process(lambda: build_features(Settings(database_url=url), port=0))
    settings = Settings(database_url=url, model_dir=str(model_dir), features_target=f"127.0.0.1:{features.port}",
                        model_poll_seconds=0.1, features_timeout_seconds=2.0)
    inference = serve_in_process(lambda: build_inference(settings, port=0))
    stop = threading.Event()
    seen: list[list[str]] = [[] for _ in range(3)]
    errors: Counter[str] = Counter()

    def load(n: int) -> None:
        rng = random.Random(n)
        deadline = time.monotonic() + 240
        with open_channel(f"127.0.0.1:{inference.port}") as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    reply = stub.Recommend(inference_pb2.RecommendRequest(user_id=rng.choice(tiny_world.users), k=5),
                                           timeout=10)
                    seen[n].append(reply.model_version)
                except grpc.RpcError as exc:
                    errors[exc.code().name] += 1
                time.sleep(0.002)

    threads = [threading.Thread(target=load, args=(n,), daemon=True) for n in range(3)]
    for t in threads:
        t.start()
    registry = inference.registry
    try:
        for version in versions[1:]:
            before = len(seen[0]) + len(seen[1]) + len(seen[2])
            publish_copy(tiny_world.package, model_dir, version, corrupt=version == corrupt)
            if version == corrupt:
                wait_until(lambda: corrupt in registry.stats.refused_versions, 60, what="corrupt package refused")
            else:
                wait_until(lambda v=version: registry.current().version == v, 60, what=f"{version} loaded")
            # some requests are answered by each model before the next swap
            wait_until(lambda b=before: len(seen[0]) + len(seen[1]) + len(seen[2]) >= b + 6, 60, what="traffic")
    finally:
        stop.set()
        for t in threads:
            t.join(30)

    answered = sum(len(s) for s in seen)
    by_version = Counter(v for s in seen for v in s)
    regressions = sum(1 for s in seen for a, b in itertools.pairwise(s) if order[b] < order[a])
    LEDGER.record("model_swaps", publications=SWAPS, corrupt_published=1, loads=registry.stats.loads,
                  refused=list(registry.stats.refused_versions), requests=answered, failed_requests=sum(errors.values()),
                  version_regressions=regressions, versions_seen=len(by_version))
    assert not errors, f"requests failed during swaps: {dict(errors)}"
    assert registry.stats.refused_versions == [corrupt]
    assert registry.stats.loads == 1 + SWAPS - 1  # v000, then every publication but the corrupt one
    assert corrupt not in by_version
    assert registry.current().version == versions[-1]
    assert regressions == 0, "a caller saw an older model after a newer one"
    assert set(by_version) <= set(versions) and versions[-1] in by_version
