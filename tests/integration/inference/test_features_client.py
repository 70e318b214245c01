"""Inference's feature client reads the compact steps view, and still understands a feature
server that predates it (a rolling upgrade that reaches inference first); columns of different
lengths are refused as an outage, never served as a truncated history."""

import pytest

from services.features.history import FeatureReader
from services.features.server import SERVICE_NAME
from services.features.servicer import FeatureServicer
from services.inference.features_client import FeatureClient
from services.inference.runtime import Step
from shared.clients import ClientConfig
from shared.errors import Unavailable
from shared.grpc_server import GrpcServer, Service
from shared.store import EventRecord, ItemRecord, open_store
from shiftrec.v1 import features_pb2, features_pb2_grpc

T0 = 1_700_000_000_000_000
EXPECTED = (
    [Step("lip", 1, T0), Step("gone", 4, T0 + 5), Step("comb", 3, T0 + 9)],
    ["makeup", "", "tools"],
)


class OlderServicer(FeatureServicer):
    """A feature server from before HISTORY_VIEW_STEPS: it ignores the field."""

    async def GetUserHistory(self, request, context):
        request.view = features_pb2.HISTORY_VIEW_UNSPECIFIED
        return await super().GetUserHistory(request, context)


class RaggedServicer(FeatureServicer):
    """A broken server whose columns disagree in length."""

    async def GetUserHistory(self, request, context):
        response = await super().GetUserHistory(request, context)
        response.steps.categories.append("extra")
        return response


@pytest.fixture
def reader(sqlite_url: str) -> FeatureReader:
    store = open_store(sqlite_url)
    store.upsert_items([ItemRecord("lip", "Lipstick", "makeup"), ItemRecord("comb", "Comb", "tools")], updated_at_us=T0)
    store.insert_events([EventRecord("e1", "u", "lip", 1, T0), EventRecord("e3", "u", "comb", 3, T0 + 9),
                         EventRecord("e2", "u", "gone", 4, T0 + 5), EventRecord("x", "v", "lip", 1, T0)],
                        received_at_us=T0)
    return FeatureReader(store, 50)


def history_through(servicer_type, reader, serve_in_process, background_loop):
    def build() -> GrpcServer:
        servicer = servicer_type(reader, executor=None)
        return GrpcServer([Service(SERVICE_NAME, features_pb2_grpc.add_FeatureServiceServicer_to_server, servicer)],
                          host="127.0.0.1", port=0, max_message_bytes=4 << 20, max_concurrent_rpcs=16,
                          stop_grace_seconds=1)

    server = serve_in_process(build)
    client = background_loop.run(lambda: FeatureClient(f"127.0.0.1:{server.port}", 5.0, 10,
                                                       ClientConfig(retries=False)))
    try:
        return background_loop.run(client.history("u"))
    finally:
        background_loop.run(client.close)


@pytest.mark.parametrize("servicer_type", [FeatureServicer, OlderServicer], ids=["steps view", "older server"])
def test_the_client_reads_the_same_history_from_either_server(servicer_type, reader, serve_in_process,
                                                              background_loop) -> None:
    assert history_through(servicer_type, reader, serve_in_process, background_loop) == EXPECTED


def test_ragged_columns_are_an_outage_not_a_history(reader, serve_in_process, background_loop) -> None:
    with pytest.raises(Unavailable, match="columns of different lengths"):
        history_through(RaggedServicer, reader, serve_in_process, background_loop)


def test_the_client_asks_for_the_steps_view(reader, serve_in_process, background_loop) -> None:
    seen: list[int] = []

    class Recording(FeatureServicer):
        async def GetUserHistory(self, request, context):
            seen.append(request.view)
            return await super().GetUserHistory(request, context)

    history_through(Recording, reader, serve_in_process, background_loop)
    assert seen == [features_pb2.HISTORY_VIEW_STEPS]
