"""DeleteUser: every event of the user leaves the store, history and recommendations fall back
(STRATEGY_RECENT_POPULAR); a re-sent old event of that user (a retry in flight, a replayed queue)
is REJECTED and stays erased, while a new event after the erasure is accepted."""

from pathlib import Path

import grpc

from services.features.server import build_server as build_features
from services.inference.server import build_server as build_inference
from services.ingestion.server import build_server as build_ingestion
from shared.clients import open_channel
from shared.protos import event_to_proto
from shared.settings import Settings
from shared.store import EventStore, create_store_engine
from shiftrec.v1 import (
    features_pb2,
    features_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    ingestion_pb2,
    ingestion_pb2_grpc,
)
from tests.reliability.helpers import LEDGER, publish_copy


def test_delete_user_erases_history_and_recommendations_fall_back(serve_in_process, database_url, tiny_world,
                                                                    tmp_path: Path) -> None:
    backend = database_url.split(":", 1)[0].split("+")[0]
    tiny_world.seed(database_url)
    model_dir = tmp_path / "models"
    publish_copy(tiny_world.package, model_dir, "v1")
    ingestion = serve_in_process(lambda: build_ingestion(Settings(database_url=database_url), port=0))
    features = serve_in_process(lambda: build_features(Settings(database_url=database_url), port=0))
    inference = serve_in_process(lambda: build_inference(Settings(
        database_url=database_url, model_dir=str(model_dir), features_target=f"127.0.0.1:{features.port}",
        features_timeout_seconds=2.0), port=0))
    user, other = tiny_world.users[4], tiny_world.users[5]
    mine = [e for e in tiny_world.events if e.user_id == user]
    store = EventStore(create_store_engine(database_url))
    total_before, other_before = store.count_events(), store.count_events(other)
    with open_channel(f"127.0.0.1:{ingestion.port}") as ic, open_channel(f"127.0.0.1:{features.port}") as fc, \
            open_channel(f"127.0.0.1:{inference.port}") as nc:
        ingest = ingestion_pb2_grpc.IngestionServiceStub(ic)
        feats = features_pb2_grpc.FeatureServiceStub(fc)
        infer = inference_pb2_grpc.InferenceServiceStub(nc)

        def recommend(u: str) -> inference_pb2.RecommendResponse:
            return infer.Recommend(inference_pb2.RecommendRequest(user_id=u, k=5), timeout=10)

        def history(u: str) -> list[str]:
            reply = feats.GetUserHistory(features_pb2.GetUserHistoryRequest(user_id=u, limit=1000), timeout=10)
            return [h.event.event_id for h in reply.events]

        assert recommend(user).strategy == inference_pb2.STRATEGY_MODEL
        assert len(history(user)) == len(mine)

        erased = ingest.DeleteUser(ingestion_pb2.DeleteUserRequest(user_id=user), timeout=10)
        assert erased.deleted_events == len(mine)
        assert store.count_events(user) == 0
        assert store.count_events(other) == other_before  # nobody else is touched
        assert store.count_events() == total_before - len(mine)
        assert history(user) == []
        after = recommend(user)
        assert after.strategy == inference_pb2.STRATEGY_RECENT_POPULAR
        # erasing again is harmless
        assert ingest.DeleteUser(ingestion_pb2.DeleteUserRequest(user_id=user), timeout=10).deleted_events == 0

        # A storefront re-sends one of the erased events (a retry, a replayed queue): refused.
        old = event_to_proto(mine[-1])
        resent = ingest.IngestEvents(ingestion_pb2.IngestEventsRequest(events=[old]), timeout=10)
        assert resent.results[0].status == ingestion_pb2.EVENT_STATUS_REJECTED
        assert resent.results[0].reason.startswith("user_id: erased")
        assert history(user) == [] and store.count_events(user) == 0
        # The shopper comes back after the erasure: new activity is stored as usual.
        fresh = event_to_proto(mine[-1])
        fresh.event_id = f"{old.event_id}-after-erasure"
        fresh.occurred_at.GetCurrentTime()
        again = ingest.IngestEvents(ingestion_pb2.IngestEventsRequest(events=[fresh]), timeout=10)
        assert again.results[0].status == ingestion_pb2.EVENT_STATUS_ACCEPTED
        assert history(user) == [fresh.event_id]
        revived = recommend(user)
        assert revived.strategy == inference_pb2.STRATEGY_MODEL  # the user is back, with one event
        try:
            ingest.DeleteUser(ingestion_pb2.DeleteUserRequest(user_id=""), timeout=10)
            empty_id = "OK"
        except grpc.RpcError as exc:
            empty_id = exc.code().name
        assert empty_id == "INVALID_ARGUMENT"
    store.engine.dispose()
    LEDGER.record(f"erasure[{backend}]", events_erased=erased.deleted_events, remaining_after_erasure=0,
                  strategy_after=inference_pb2.Strategy.Name(after.strategy),
                  resent_old_event=ingestion_pb2.EventStatus.Name(resent.results[0].status),
                  strategy_after_resend=inference_pb2.Strategy.Name(revived.strategy))
