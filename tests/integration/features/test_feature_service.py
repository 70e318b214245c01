"""FeatureService over real gRPC beside IngestionService on one store: read-your-writes,
ordering, item attributes, and every bad input."""

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from services.features.server import build_server as build_features
from services.ingestion.server import build_server as build_ingestion
from shared.settings import Settings
from shiftrec.v1 import (
    common_pb2,
    features_pb2,
    features_pb2_grpc,
    ingestion_pb2,
    ingestion_pb2_grpc,
)


@pytest.fixture
def stubs(serve_in_process, database_url):
    settings = Settings(database_url=database_url, history_length=3)
    ingestion = serve_in_process(lambda: build_ingestion(settings, port=0))
    features = serve_in_process(lambda: build_features(settings, port=0))
    channels = [grpc.insecure_channel(f"127.0.0.1:{s.port}") for s in (ingestion, features)]
    yield (
        ingestion_pb2_grpc.IngestionServiceStub(channels[0]),
        features_pb2_grpc.FeatureServiceStub(channels[1]),
    )
    for channel in channels:
        channel.close()


def event(event_id: str, user: str, item: str, seconds: int, kind: int = common_pb2.EVENT_TYPE_VIEW) -> common_pb2.Event:
    return common_pb2.Event(event_id=event_id, user_id=user, item_id=item, type=kind,
                            occurred_at=Timestamp(seconds=seconds, nanos=1000), platform="web")


def test_an_acknowledged_event_is_in_the_next_read(stubs) -> None:
    ingestion, features = stubs
    for n in range(20):
        ack = ingestion.IngestEvents(ingestion_pb2.IngestEventsRequest(
            events=[event(f"e{n}", "u1", f"i{n}", 1_700_000_000 + n)]), timeout=10)
        assert ack.accepted == 1
        history = features.GetUserHistory(features_pb2.GetUserHistoryRequest(user_id="u1", limit=100), timeout=10)
        assert [h.event.event_id for h in history.events] == [f"e{k}" for k in range(n + 1)]
        assert history.read_at.seconds > 1_700_000_000


def test_history_is_most_recent_oldest_first_with_item_attributes(stubs) -> None:
    ingestion, features = stubs
    ingestion.UpsertItems(ingestion_pb2.UpsertItemsRequest(items=[
        common_pb2.Item(item_id="lip", category="makeup", tags=["lips", "red"]),
    ]), timeout=10)
    # Sent out of order; ties on occurred_at keep arrival order.
    t = 1_700_000_000
    events = [event("c", "u", "lip", t + 300), event("a", "u", "x", t + 100), event("b", "u", "lip", t + 200),
              event("d", "u", "y", t + 300, common_pb2.EVENT_TYPE_PURCHASE), event("other", "v", "x", t + 999)]
    assert ingestion.IngestEvents(ingestion_pb2.IngestEventsRequest(events=events), timeout=10).accepted == 5
    default = features.GetUserHistory(features_pb2.GetUserHistoryRequest(user_id="u"), timeout=10)
    assert [h.event.event_id for h in default.events] == ["b", "c", "d"]  # history_length=3
    assert [h.category for h in default.events] == ["makeup", "makeup", ""]
    assert list(default.events[0].tags) == ["lips", "red"]
    assert default.events[2].event.type == common_pb2.EVENT_TYPE_PURCHASE
    assert default.events[0].event.occurred_at == Timestamp(seconds=t + 200, nanos=1000)
    two = features.GetUserHistory(features_pb2.GetUserHistoryRequest(user_id="u", limit=2), timeout=10)
    assert [h.event.event_id for h in two.events] == ["c", "d"]
    nobody = features.GetUserHistory(features_pb2.GetUserHistoryRequest(user_id="nobody"), timeout=10)
    assert list(nobody.events) == []


def test_the_steps_view_is_the_full_history_as_columns(stubs) -> None:
    ingestion, features = stubs
    ingestion.UpsertItems(ingestion_pb2.UpsertItemsRequest(items=[
        common_pb2.Item(item_id="lip", category="makeup", tags=["lips"]),
        common_pb2.Item(item_id="comb", category="tools"),
    ]), timeout=10)
    t = 1_700_000_000
    events = [event("a", "u", "lip", t + 100), event("c", "u", "comb", t + 300, common_pb2.EVENT_TYPE_ADD_TO_CART),
              event("b", "u", "gone", t + 200), event("d", "u", "lip", t + 300, common_pb2.EVENT_TYPE_PURCHASE),
              event("other", "v", "lip", t + 999)]
    assert ingestion.IngestEvents(ingestion_pb2.IngestEventsRequest(events=events), timeout=10).accepted == 5
    for limit in (0, 2, 100):  # 0: the server's default (history_length=3)
        full = features.GetUserHistory(features_pb2.GetUserHistoryRequest(user_id="u", limit=limit), timeout=10)
        steps = features.GetUserHistory(features_pb2.GetUserHistoryRequest(
            user_id="u", limit=limit, view=features_pb2.HISTORY_VIEW_STEPS), timeout=10)
        assert list(steps.events) == [] and steps.user_id == "u"
        columns = steps.steps
        assert list(zip(columns.item_ids, columns.types, columns.occurred_at_us, columns.categories, strict=True)) == [
            (h.event.item_id, h.event.type, h.event.occurred_at.ToMicroseconds(), h.category) for h in full.events]
        assert len(columns.item_ids) == {0: 3, 2: 2, 100: 4}[limit]
    assert list(columns.item_ids) == ["lip", "gone", "comb", "lip"]
    assert list(columns.categories) == ["makeup", "", "tools", "makeup"]  # "gone" is not in the catalogue
    explicit = features.GetUserHistory(features_pb2.GetUserHistoryRequest(
        user_id="u", limit=100, view=features_pb2.HISTORY_VIEW_FULL), timeout=10)
    assert [h.event.event_id for h in explicit.events] == ["a", "b", "c", "d"] and not explicit.steps.item_ids
    nobody = features.GetUserHistory(features_pb2.GetUserHistoryRequest(
        user_id="nobody", view=features_pb2.HISTORY_VIEW_STEPS), timeout=10)
    assert list(nobody.steps.item_ids) == [] and list(nobody.events) == []


def test_get_items_reports_missing(stubs) -> None:
    ingestion, features = stubs
    ingestion.UpsertItems(ingestion_pb2.UpsertItemsRequest(items=[
        common_pb2.Item(item_id="a", title="A", category="c1", price=2.5),
        common_pb2.Item(item_id="b", title="B", category="c2"),
    ]), timeout=10)
    response = features.GetItems(features_pb2.GetItemsRequest(item_ids=["b", "zz", "a"]), timeout=10)
    assert [i.item_id for i in response.items] == ["b", "a"]
    assert response.items[1].price == 2.5
    assert list(response.missing_item_ids) == ["zz"]


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda f: f.GetUserHistory(features_pb2.GetUserHistoryRequest(user_id="")), "user_id"),
        (lambda f: f.GetUserHistory(features_pb2.GetUserHistoryRequest(user_id="u" * 129)), "user_id"),
        (lambda f: f.GetUserHistory(features_pb2.GetUserHistoryRequest(user_id="u", limit=-1)), "limit"),
        (lambda f: f.GetUserHistory(features_pb2.GetUserHistoryRequest(user_id="u", limit=10_001)), "limit"),
        (lambda f: f.GetUserHistory(features_pb2.GetUserHistoryRequest(
            user_id="", view=features_pb2.HISTORY_VIEW_STEPS)), "user_id"),
        (lambda f: f.GetUserHistory(features_pb2.GetUserHistoryRequest(
            user_id="u", limit=-1, view=features_pb2.HISTORY_VIEW_STEPS)), "limit"),
        (lambda f: f.GetUserHistory(features_pb2.GetUserHistoryRequest(user_id="u", view=7)), "view"),
        (lambda f: f.GetItems(features_pb2.GetItemsRequest()), "item_ids"),
        (lambda f: f.GetItems(features_pb2.GetItemsRequest(item_ids=["ok", ""])), "item_ids[1]"),
        (lambda f: f.GetItems(features_pb2.GetItemsRequest(item_ids=["x"] * 10_001)), "item_ids"),
    ],
)
def test_bad_requests_are_invalid_argument(stubs, call, field) -> None:
    _, features = stubs
    with pytest.raises(grpc.RpcError) as caught:
        call(features)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"{field}: ")
