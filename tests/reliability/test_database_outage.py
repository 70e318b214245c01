"""PostgreSQL goes away under a running ingestion server (simulated by a loopback TCP proxy that
is cut and restored; the machine's PostgreSQL itself is never touched): UNAVAILABLE, nothing
partial stored, and the same server process recovers by itself when the database returns."""

from collections.abc import Iterator

import grpc
import pytest
from sqlalchemy import make_url

from services.ingestion.server import build_server
from shared.clients import open_channel
from shared.settings import Settings
from shared.store import EventStore, create_store_engine
from shiftrec.v1 import common_pb2, ingestion_pb2, ingestion_pb2_grpc
from tests.reliability.helpers import LEDGER, TcpProxy, batch_events, events_fingerprint

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


@pytest.fixture
def proxied(postgres_url: str) -> Iterator[tuple[str, TcpProxy]]:
    """(URL through the proxy, the proxy); plain-text protocol so the proxy can see statements."""
    url = make_url(postgres_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432)).start()
    through = url.set(host="127.0.0.1", port=proxy.port, query={"sslmode": "disable", "connect_timeout": "5"})
    yield through.render_as_string(hide_password=False), proxy
    proxy.close()


@pytest.fixture
def direct_store(postgres_url: str) -> Iterator[EventStore]:
    """The same database reached directly, never through the proxy: the ground truth."""
    store = EventStore(create_store_engine(postgres_url))
    yield store
    store.engine.dispose()


def ingest(stub, events, timeout: float = 10):
    return stub.IngestEvents(ingestion_pb2.IngestEventsRequest(events=events), timeout=timeout)


def call_code(fn) -> grpc.StatusCode:
    try:
        fn()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.timeout(120)
def test_database_down_is_unavailable_then_recovers_without_restart(serve_in_process, proxied, direct_store) -> None:
    url, proxy = proxied
    server = serve_in_process(lambda: build_server(Settings(database_url=url, db_workers=2), port=0))
    target = f"127.0.0.1:{server.port}"
    first, second = batch_events("before", 50), batch_events("during", 500)
    with grpc.insecure_channel(target) as plain, open_channel(target) as retrying:
        stub = ingestion_pb2_grpc.IngestionServiceStub(plain)
        retry_stub = ingestion_pb2_grpc.IngestionServiceStub(retrying)
        assert ingest(stub, first).accepted == 50  # pooled connections exist through the proxy
        before = events_fingerprint(direct_store)

        proxy.cut()  # the database stops: open connections reset, new ones refused
        outage_codes = [
            call_code(lambda: ingest(stub, second)),
            call_code(lambda: ingest(retry_stub, second)),  # after the channel's retries, if any
            call_code(lambda: ingest(stub, second)),
            call_code(lambda: stub.UpsertItems(ingestion_pb2.UpsertItemsRequest(
                items=[common_pb2.Item(item_id="item-x", title="x")]), timeout=10)),
            call_code(lambda: stub.DeleteUser(ingestion_pb2.DeleteUserRequest(user_id="u-0"), timeout=10)),
        ]
        assert outage_codes == [UNAVAILABLE] * len(outage_codes)
        assert events_fingerprint(direct_store) == before, "a partial batch was stored during the outage"
        assert direct_store.count_items() == 0

        proxy.restore()  # the database is back; the same server process, no restart
        attempts, response = 0, None
        while response is None and attempts < 5:
            attempts += 1
            try:
                response = ingest(stub, second)
            except grpc.RpcError as exc:
                assert exc.code() == UNAVAILABLE
        assert response is not None, "ingestion did not recover after the database came back"
        assert response.accepted == 500
        assert ingest(stub, second).duplicates == 500
        assert stub.UpsertItems(ingestion_pb2.UpsertItemsRequest(
            items=[common_pb2.Item(item_id="item-x", title="x")]), timeout=10).upserted == 1
    assert direct_store.count_events() == 550
    LEDGER.record("database_outage[postgresql]", faults=1, calls_during_outage=len(outage_codes),
                  unavailable_during_outage=outage_codes.count(UNAVAILABLE), partial_rows=0,
                  attempts_to_recover=attempts, server_restarts=0)


@pytest.mark.timeout(120)
def test_connection_lost_mid_insert_stores_nothing(serve_in_process, proxied, direct_store) -> None:
    """The connection dies right after the INSERT reached the server (before COMMIT): the
    transaction is rolled back by PostgreSQL; the caller gets UNAVAILABLE; a re-send works."""
    url, proxy = proxied
    server = serve_in_process(lambda: build_server(Settings(database_url=url, db_workers=2), port=0))
    events = batch_events("mid-insert", 300)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
        proxy.arm(b"INSERT INTO events", after_reply=True)
        assert call_code(lambda: ingest(stub, events)) == UNAVAILABLE
        assert proxy.triggered.is_set()
        assert direct_store.count_events() == 0
        assert ingest(stub, events).accepted == 300  # the pool replaces the dead connection
    LEDGER.record("connection_lost_mid_insert[postgresql]", faults=1, partial_rows=0, resend_accepted=300)


@pytest.mark.timeout(120)
def test_lost_commit_acknowledgement_is_healed_by_the_idempotent_resend(serve_in_process, proxied, direct_store) -> None:
    """The worst window: PostgreSQL committed, but the connection died before ingestion heard
    it. The caller gets UNAVAILABLE although the events ARE stored; its re-send reports them
    DUPLICATE and nothing is stored twice. (So "UNAVAILABLE -> nothing stored" holds for every
    failure before COMMIT; at COMMIT itself the outcome is unknown and the re-send settles it.)"""
    url, proxy = proxied
    server = serve_in_process(lambda: build_server(Settings(database_url=url, db_workers=2), port=0))
    events = batch_events("lost-commit", 200)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
        proxy.arm(b"COMMIT", after_reply=True)
        code = call_code(lambda: ingest(stub, events))
        assert proxy.triggered.is_set()
        stored_after_failure = direct_store.count_events()
        resent = ingest(stub, events)
    assert code == UNAVAILABLE
    assert stored_after_failure == 200  # committed before the connection was cut
    assert resent.duplicates == 200 and resent.accepted == 0
    assert direct_store.count_events() == 200
    LEDGER.record("lost_commit_ack[postgresql]", faults=1, caller_saw=code.name,
                  stored_before_resend=stored_after_failure, resend_duplicates=resent.duplicates)
