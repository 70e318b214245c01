"""Finding 3: traffic without a token must never exhaust what authenticated calls and probes
need. Health and reflection stay open (probes and tooling carry no token), so they get a cap of
their own instead of sharing SHIFTREC_MAX_CONCURRENT_RPCS with shiftrec.v1 calls; and a call
without the token is refused before its request is decoded."""

import asyncio
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.ingestion.server import build_server
from shared.clients import ClientConfig, open_channel
from shared.grpc_server import BearerTokenInterceptor
from shared.settings import Settings
from shared.store import EventStore, create_store_engine
from shiftrec.v1 import ingestion_pb2, ingestion_pb2_grpc
from tests.reliability.helpers import batch_events

TOKEN = "s3cret-token"
STREAMS = 300


@pytest.mark.timeout(180)
def test_300_unauthenticated_watch_streams_do_not_lock_out_callers(serve_in_process, sqlite_url) -> None:
    server = serve_in_process(lambda: build_server(Settings(database_url=sqlite_url, auth_token=TOKEN), port=0))
    target = f"127.0.0.1:{server.port}"
    with open_channel(target) as anonymous, open_channel(target, ClientConfig(token=TOKEN)) as authed:
        watch = health_pb2_grpc.HealthStub(anonymous).Watch
        streams: list[Iterator[health_pb2.HealthCheckResponse]] = []
        codes = []
        for _ in range(STREAMS):
            stream = watch(health_pb2.HealthCheckRequest(service=""), timeout=120)
            try:
                next(stream)  # the server holds this stream open now
                streams.append(stream)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}

        # The probe and an authenticated call still get through; a call without the token is
        # refused as such, not as a busy server, and stores nothing.
        probe = health_pb2_grpc.HealthStub(anonymous).Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert probe.status == health_pb2.HealthCheckResponse.SERVING
        ingest = ingestion_pb2_grpc.IngestionServiceStub(authed).IngestEvents
        reply = ingest(ingestion_pb2.IngestEventsRequest(events=batch_events("authed", 3)), timeout=30)
        assert reply.accepted == 3
        with pytest.raises(grpc.RpcError) as refused:
            ingestion_pb2_grpc.IngestionServiceStub(anonymous).IngestEvents(
                ingestion_pb2.IngestEventsRequest(events=batch_events("anon", 3)), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        for stream in streams:
            stream.cancel()  # type: ignore[attr-defined]
    # The open streams beyond their own cap were refused.
    assert codes.count(grpc.StatusCode.OK) == Settings().max_open_streams
    store = EventStore(create_store_engine(sqlite_url))
    assert store.count_events() == 3
    store.engine.dispose()


def test_a_request_without_the_token_is_never_decoded() -> None:
    decoded: list[bytes] = []

    def decode(data: bytes) -> bytes:
        decoded.append(data)
        return data

    async def behaviour(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    async def continuation(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(behaviour, request_deserializer=decode)

    class Details(grpc.HandlerCallDetails):
        method = "/shiftrec.v1.IngestionService/IngestEvents"
        invocation_metadata = (("authorization", "Bearer wrong"),)

    interceptor = BearerTokenInterceptor(TOKEN)
    handler = asyncio.run(interceptor.intercept_service(continuation, Details()))  # type: ignore[arg-type]
    handler.request_deserializer(b"\xff" * 1024)
    assert decoded == []
    assert handler.request_deserializer is not decode
