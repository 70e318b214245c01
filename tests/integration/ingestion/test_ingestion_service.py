"""IngestionService over a real gRPC channel, on SQLite and PostgreSQL."""

import time

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from services.ingestion.server import SERVICE_NAME, build_server
from shared.settings import Settings
from shared.store import EventStore, create_store_engine
from shiftrec.v1 import common_pb2, ingestion_pb2, ingestion_pb2_grpc

NOW = 1_700_000_000


def make_event(event_id: str, user: str = "u1", item: str = "i1", **fields: object) -> common_pb2.Event:
    message = common_pb2.Event(
        event_id=event_id,
        user_id=user,
        item_id=item,
        type=common_pb2.EVENT_TYPE_VIEW,
        occurred_at=Timestamp(seconds=NOW),
        platform="web",
    )
    for name, value in fields.items():
        if name == "occurred_at" and value is None:
            message.ClearField("occurred_at")
        else:
            setattr(message, name, value) if name != "occurred_at" else message.occurred_at.CopyFrom(value)
    return message


@pytest.fixture
def ingestion(serve_in_process, database_url):
    settings = Settings(database_url=database_url, max_batch_size=100)
    server = serve_in_process(lambda: build_server(settings, port=0))
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    store = EventStore(create_store_engine(database_url))
    yield ingestion_pb2_grpc.IngestionServiceStub(channel), store, channel
    channel.close()
    store.engine.dispose()


def ingest(stub, *events):
    return stub.IngestEvents(ingestion_pb2.IngestEventsRequest(events=list(events)), timeout=10)


def test_accepts_then_reports_duplicates(ingestion) -> None:
    stub, store, _ = ingestion
    first = ingest(stub, make_event("a"), make_event("b"), make_event("a"))
    assert [r.status for r in first.results] == [
        ingestion_pb2.EVENT_STATUS_ACCEPTED,
        ingestion_pb2.EVENT_STATUS_ACCEPTED,
        ingestion_pb2.EVENT_STATUS_DUPLICATE,
    ]
    assert (first.accepted, first.duplicates, first.rejected) == (2, 1, 0)
    again = ingest(stub, make_event("b"), make_event("c"))
    assert [r.status for r in again.results] == [
        ingestion_pb2.EVENT_STATUS_DUPLICATE,
        ingestion_pb2.EVENT_STATUS_ACCEPTED,
    ]
    assert store.count_events() == 3


def test_ids_are_stored_verbatim(ingestion) -> None:
    stub, store, _ = ingestion
    strange = ["Robert'); DROP TABLE events;--", "ユーザー🛒", 'quote"s\\and\tcontrol\x01', "x" * 128]
    response = ingest(stub, *(make_event(f"e{i}", user=s, item=s) for i, s in enumerate(strange)))
    assert response.accepted == len(strange)
    for s in strange:
        [entry] = store.recent_history(s, 10)
        assert (entry.event.user_id, entry.event.item_id) == (s, s)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"event_id": ""}, "event_id: must not be empty"),
        ({"event_id": "e" * 129}, "event_id: must be at most 128 characters (got 129)"),
        ({"user_id": ""}, "user_id: must not be empty"),
        ({"item_id": "i" * 129}, "item_id: must be at most 128 characters (got 129)"),
        ({"type": common_pb2.EVENT_TYPE_UNSPECIFIED}, "type: must not be EVENT_TYPE_UNSPECIFIED"),
        ({"type": 42}, "type: unknown event type 42"),
        ({"occurred_at": None}, "occurred_at: missing"),
        ({"occurred_at": Timestamp(seconds=631_151_999)}, "occurred_at: before 1990-01-01"),
        ({"occurred_at": Timestamp(seconds=4_102_444_800)}, "occurred_at: more than 5 minutes in the future"),
        ({"value": float("nan")}, "value: must be finite (got nan)"),
        ({"value": float("inf")}, "value: must be finite (got inf)"),
    ],
)
def test_bad_events_are_rejected_alone_and_not_stored(ingestion, fields, reason) -> None:
    stub, store, _ = ingestion
    bad = make_event(fields.get("event_id", "bad"), user="victim", **{
        k: v for k, v in fields.items() if k != "event_id"
    })
    response = ingest(stub, make_event("good", user="other"), bad)
    assert response.results[0].status == ingestion_pb2.EVENT_STATUS_ACCEPTED
    assert response.results[1].status == ingestion_pb2.EVENT_STATUS_REJECTED
    assert response.results[1].reason == reason
    assert (response.accepted, response.rejected) == (1, 1)
    assert store.count_events() == 1
    assert store.count_events("victim") == 0


def _violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(error)
    assert status is not None, "INVALID_ARGUMENT must carry google.rpc.Status details"
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    return [(v.field, v.description) for v in bad_request.field_violations]


def test_empty_batch_is_invalid_argument(ingestion) -> None:
    stub, store, _ = ingestion
    with pytest.raises(grpc.RpcError) as caught:
        ingest(stub)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(caught.value) == [("events", "must contain at least one entry")]
    assert store.count_events() == 0


def test_oversized_batch_is_invalid_argument_and_stores_nothing(ingestion) -> None:
    stub, store, _ = ingestion
    with pytest.raises(grpc.RpcError) as caught:
        ingest(stub, *(make_event(f"e{i}") for i in range(101)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(caught.value) == [("events", "101 entries exceed the maximum batch size 100")]
    assert store.count_events() == 0
    assert ingest(stub, *(make_event(f"e{i}") for i in range(100))).accepted == 100


def test_upsert_items_all_or_nothing(ingestion) -> None:
    stub, store, _ = ingestion
    good = common_pb2.Item(item_id="i1", title="Lip balm", category="makeup", tags=["lips"], price=3.5)
    bad = common_pb2.Item(item_id="i2", price=float("nan"), tags=["x" * 129])
    with pytest.raises(grpc.RpcError) as caught:
        stub.UpsertItems(ingestion_pb2.UpsertItemsRequest(items=[good, bad]), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in _violations(caught.value)] == ["items[1].price", "items[1].tags[0]"]
    assert store.count_items() == 0
    response = stub.UpsertItems(ingestion_pb2.UpsertItemsRequest(items=[good]), timeout=10)
    assert response.upserted == 1
    changed = common_pb2.Item(item_id="i1", title="Lip balm 2", category="skincare")
    stub.UpsertItems(ingestion_pb2.UpsertItemsRequest(items=[changed]), timeout=10)
    assert store.get_items(["i1"])["i1"].category == "skincare"
    assert store.count_items() == 1


def test_delete_user_erases_only_that_user(ingestion) -> None:
    stub, store, _ = ingestion
    ingest(stub, make_event("a", user="gone"), make_event("b", user="gone"), make_event("c", user="kept"))
    response = stub.DeleteUser(ingestion_pb2.DeleteUserRequest(user_id="gone"), timeout=10)
    assert response.deleted_events == 2
    assert store.count_events("gone") == 0 and store.count_events("kept") == 1
    assert stub.DeleteUser(ingestion_pb2.DeleteUserRequest(user_id="gone")).deleted_events == 0
    # An erased event sent again stays out; the shopper's activity after the erasure is stored.
    replay = ingest(stub, make_event("a", user="gone"), make_event("later", user="gone",
                                                                    occurred_at=Timestamp(seconds=int(time.time()) + 2)))
    assert [r.status for r in replay.results] == [ingestion_pb2.EVENT_STATUS_REJECTED, ingestion_pb2.EVENT_STATUS_ACCEPTED]
    assert replay.results[0].reason.startswith("user_id: erased")
    assert store.count_events("gone") == 1
    store.delete_user("gone", erased_at_us=0)  # tidy up for the count below
    with pytest.raises(grpc.RpcError) as caught:
        stub.DeleteUser(ingestion_pb2.DeleteUserRequest(user_id=""), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert store.count_events() == 1


def test_health_and_reflection(ingestion) -> None:
    _, _, channel = ingestion
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE_NAME):
        answer = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    [reply] = reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in reply.list_services_response.service}
    assert {"shiftrec.v1.IngestionService", "grpc.health.v1.Health"} <= names


def test_a_failing_database_stores_nothing_of_the_batch(serve_in_process, database_url) -> None:
    """The connection fails right after the batch's first INSERT ran: UNAVAILABLE, no row kept."""
    settings = Settings(database_url=database_url, max_batch_size=5000)
    server = serve_in_process(lambda: build_server(settings, port=0))
    engine = create_store_engine(database_url)
    inserts = []

    def fail_after_first_insert(conn, cursor, statement, parameters, context, executemany):
        if "INSERT INTO EVENTS" in " ".join(statement.upper().split()):
            inserts.append(statement)
            raise OperationalError(statement, parameters, Exception("simulated outage"))

    # The server has its own engine: listen on every engine of this process.
    sa_event.listen(Engine, "after_cursor_execute", fail_after_first_insert)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                ingest(stub, *(make_event(f"e{i}", user=f"u{i % 7}") for i in range(3000)))
    finally:
        sa_event.remove(Engine, "after_cursor_execute", fail_after_first_insert)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(inserts) == 1  # the INSERT ran, then the transaction was rolled back
    assert EventStore(engine).count_events() == 0
    engine.dispose()


def test_unreachable_database_is_unavailable(serve_in_process, sqlite_url) -> None:
    """A PostgreSQL that refuses connections: UNAVAILABLE (retryable), not INTERNAL."""
    server = serve_in_process(lambda: build_server(Settings(database_url=sqlite_url), port=0))
    from shared.store import EventStore as Store

    refused = create_store_engine("postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2")
    servicer = server.services[0].servicer
    servicer.ingestor.store = Store(refused)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            ingest(stub, make_event("a"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "database unavailable" in caught.value.details()
