"""FeatureService over gRPC: proto -> domain, call the core off the event loop, domain -> proto."""

from concurrent.futures import Executor

import grpc

from services.features.history import FeatureReader
from shared import metrics
from shared.grpc_server import run_blocking
from shared.protos import event_to_proto, item_to_proto, timestamp_from_us
from shiftrec.v1 import features_pb2, features_pb2_grpc


class FeatureServicer(features_pb2_grpc.FeatureServiceServicer):
    def __init__(self, reader: FeatureReader, executor: Executor) -> None:
        self.reader = reader
        self.executor = executor

    async def GetUserHistory(
        self, request: features_pb2.GetUserHistoryRequest, context: grpc.aio.ServicerContext
    ) -> features_pb2.GetUserHistoryResponse:
        history = await run_blocking(self.executor, self.reader.history, request.user_id, request.limit)
        if history.entries:
            newest = history.entries[-1].event.occurred_at_us
            metrics.FEATURE_FRESHNESS.observe(max(history.read_at_us - newest, 0) / 1e6)
        return features_pb2.GetUserHistoryResponse(
            user_id=history.user_id,
            events=[
                features_pb2.HistoryEvent(event=event_to_proto(h.event), category=h.category, tags=h.tags)
                for h in history.entries
            ],
            read_at=timestamp_from_us(history.read_at_us),
        )

    async def GetItems(
        self, request: features_pb2.GetItemsRequest, context: grpc.aio.ServicerContext
    ) -> features_pb2.GetItemsResponse:
        found, missing = await run_blocking(self.executor, self.reader.items, list(request.item_ids))
        return features_pb2.GetItemsResponse(
            items=[item_to_proto(i) for i in found], missing_item_ids=missing
        )
