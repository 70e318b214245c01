"""Beyond SHIFTREC_MAX_CONCURRENT_RPCS the server answers RESOURCE_EXHAUSTED at once instead of
queueing: with every slot held by a slow call, the extra calls are refused while the slow ones
are still running (so they did not wait in a queue), and nothing hangs."""

import threading

import grpc
import pytest

from services.ingestion.server import build_server
from shared.clients import open_channel
from shared.settings import Settings
from shared.store import EventStore, create_store_engine
from shiftrec.v1 import ingestion_pb2, ingestion_pb2_grpc
from tests.reliability.helpers import LEDGER, batch_events

LIMIT = 3
CALLS = 24


@pytest.mark.timeout(120)
def test_over_capacity_calls_get_resource_exhausted_quickly(serve_in_process, sqlite_url) -> None:
    settings = Settings(database_url=sqlite_url, max_concurrent_rpcs=LIMIT, db_workers=LIMIT)
    server = serve_in_process(lambda: build_server(settings, port=0))
    ingestor = server.services[0].servicer.ingestor
    real = ingestor.store
    gate = threading.Event()
    entered = threading.Semaphore(0)

    class Slow:  # every write waits for the gate: calls hold their slot as long as we want
        def __getattr__(self, name: str):
            return getattr(real, name)

        def insert_events(self, events, received_at_us):
            entered.release()
            gate.wait(60)
            return real.insert_events(events, received_at_us)

    ingestor.store = Slow()
    try:
        with open_channel(f"127.0.0.1:{server.port}") as channel:
            stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
            slow = [stub.IngestEvents.future(ingestion_pb2.IngestEventsRequest(events=batch_events(f"slow{i}", 5)),
                                             timeout=60) for i in range(LIMIT)]
            for _ in range(LIMIT):
                assert entered.acquire(timeout=30), "the slow calls never reached the store"
            extra = [stub.IngestEvents.future(ingestion_pb2.IngestEventsRequest(events=batch_events(f"x{i}", 5)),
                                              timeout=60) for i in range(CALLS)]
            # Every extra call is answered while the gate is still shut: refused, not queued.
            codes = []
            for future in extra:
                try:
                    future.result(timeout=30)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    codes.append(exc.code())
            assert not any(f.done() for f in slow), "a slow call finished before the gate opened"
            gate.set()
            slow_codes = [f.code() for f in slow]
            for f in slow:
                f.result(timeout=30)
    finally:
        gate.set()
    stored = EventStore(create_store_engine(sqlite_url))
    LEDGER.record("backpressure", max_concurrent_rpcs=LIMIT, calls_over_capacity=CALLS,
                  resource_exhausted=codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED),
                  held_calls_ok=slow_codes.count(grpc.StatusCode.OK), hung=0)
    assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * CALLS
    assert slow_codes == [grpc.StatusCode.OK] * LIMIT
    assert stored.count_events() == 5 * LIMIT  # refused calls stored nothing
    stored.engine.dispose()
