"""The retry policy of shared.clients for UNAVAILABLE: a transient UNAVAILABLE is retried by
gRPC itself, without the caller noticing — and the two cases where, today, it is not."""

import threading
from collections.abc import Iterator

import grpc
import pytest

from services.ingestion.server import build_server
from shared.clients import open_channel
from shared.errors import Unavailable
from shared.settings import Settings
from shiftrec.v1 import ingestion_pb2, ingestion_pb2_grpc
from tests.conftest import BackgroundLoop
from tests.reliability.helpers import LEDGER, batch_events

METHOD = "/shiftrec.v1.IngestionService/IngestEvents"


class FlakyHandler:
    """IngestEvents that answers UNAVAILABLE to the first `failures` attempts of each call
    (no headers sent first: a Trailers-Only response, as a load balancer or a server that is
    shutting down gives), then echoes the request size."""

    def __init__(self, failures: int, send_headers_first: bool = False) -> None:
        self.failures = failures
        self.send_headers_first = send_headers_first
        self.attempts = 0
        self.lock = threading.Lock()

    async def __call__(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        with self.lock:
            self.attempts += 1
            attempt = self.attempts
        if self.send_headers_first:
            await context.send_initial_metadata((("x-request-id", "r"),))
        if attempt <= self.failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "transient")
        return str(len(request)).encode()


@pytest.fixture
def flaky_server(background_loop: BackgroundLoop) -> Iterator:
    servers = []

    def start(handler: FlakyHandler) -> str:
        async def build():
            server = grpc.aio.server(options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)])
            server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
                "shiftrec.v1.IngestionService", {"IngestEvents": grpc.unary_unary_rpc_method_handler(handler.__call__)})])
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            servers.append(server)
            return f"127.0.0.1:{port}"

        return background_loop.run(build)

    yield start
    for server in servers:
        background_loop.run(server.stop(0))


def raw_call(target: str, payload: bytes) -> bytes:
    with open_channel(target) as channel:
        return channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)(payload, timeout=20)


def test_transient_unavailable_is_retried_transparently(flaky_server) -> None:
    handler = FlakyHandler(failures=2)
    target = flaky_server(handler)
    assert raw_call(target, b"x" * 100) == b"100"  # the caller sees one successful call
    assert handler.attempts == 3  # two UNAVAILABLE answers were retried by the channel
    LEDGER.record("transparent_retry", transient_unavailable=2, attempts=handler.attempts, caller_errors=0)


def test_retries_give_up_after_max_attempts(flaky_server) -> None:
    handler = FlakyHandler(failures=100)
    target = flaky_server(handler)
    with pytest.raises(grpc.RpcError) as caught:
        raw_call(target, b"x")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert handler.attempts == 5  # maxAttempts of RETRY_POLICY



def test_ingestion_server_answer_unavailable_is_retried_transparently(serve_in_process, sqlite_url) -> None:
    """The real ingestion server: its store fails twice with Unavailable (database blip), then
    works. The caller, using shared.clients, should see one successful call.

    The server's first attempt is a real UNAVAILABLE; the retry policy (shared/clients.py) would
    resend it — but ObservingInterceptor (shared/grpc_server.py) sends the x-request-id header
    before the handler runs, and gRPC never retries a call whose response headers arrived."""
    server = serve_in_process(lambda: build_server(Settings(database_url=sqlite_url), port=0))
    ingestor = server.services[0].servicer.ingestor
    real = ingestor.store
    calls = {"n": 0}

    class Blip:
        def __getattr__(self, name: str):
            return getattr(real, name)

        def insert_events(self, events, received_at_us):
            calls["n"] += 1
            if calls["n"] <= 2:
                raise Unavailable("database unavailable: simulated blip")
            return real.insert_events(events, received_at_us)

    ingestor.store = Blip()
    with open_channel(f"127.0.0.1:{server.port}") as channel:
        stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
        try:
            response = stub.IngestEvents(ingestion_pb2.IngestEventsRequest(events=batch_events("blip", 10)), timeout=20)
            outcome = f"OK accepted={response.accepted}"
        except grpc.RpcError as exc:
            outcome = exc.code().name
    LEDGER.record("server_unavailable_retry", attempts=calls["n"], caller_saw=outcome)
    assert outcome == "OK accepted=10"
    assert calls["n"] == 3


def test_headers_sent_before_the_error_disable_retries(flaky_server) -> None:
    """Pins down the cause of the bug above with a bare server: the same transient UNAVAILABLE
    is not retried once response headers were sent."""
    handler = FlakyHandler(failures=1, send_headers_first=True)
    target = flaky_server(handler)
    with pytest.raises(grpc.RpcError) as caught:
        raw_call(target, b"x")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert handler.attempts == 1



def test_large_request_is_retried_transparently(flaky_server) -> None:
    """A 300 KB batch (about 2,000 events; the importer's 500-event batches are ~75 KB, but
    MAX_BATCH_SIZE allows 10,000 ≈ 1.5 MB). gRPC only retries calls whose request fits its
    per-RPC retry buffer (256 KiB by default); shared.clients does not raise it."""
    handler = FlakyHandler(failures=1)
    target = flaky_server(handler)
    try:
        outcome = raw_call(target, b"x" * 300_000).decode()
    except grpc.RpcError as exc:
        outcome = exc.code().name
    LEDGER.record("large_request_retry", request_bytes=300_000, attempts=handler.attempts, caller_saw=outcome)
    assert outcome == "300000"
    assert handler.attempts == 2
