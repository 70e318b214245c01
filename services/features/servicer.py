"""FeatureService over gRPC: proto -> domain, call the core off the event loop, domain -> proto."""

from concurrent.futures import Executor
from typing import cast

import grpc

from services.features.history import FeatureReader
from shared import metrics
from shared.errors import InvalidArgument
from shared.grpc_server import run_blocking
from shared.protos import event_to_proto, item_to_proto, timestamp_from_us
from shiftrec.v1 import common_pb2, features_pb2, features_pb2_grpc

FULL_VIEWS = (features_pb2.HISTORY_VIEW_UNSPECIFIED, features_pb2.HISTORY_VIEW_FULL)


class FeatureServicer(features_pb2_grpc.FeatureServiceServicer):
    def __init__(self, reader: FeatureReader, executor: Executor) -> None:
        self.reader = reader
        self.executor = executor

    async def GetUserHistory(
        self, request: features_pb2.GetUserHistoryRequest, context: grpc.aio.ServicerContext
    ) -> features_pb2.GetUserHistoryResponse:
        if request.view == features_pb2.HISTORY_VIEW_STEPS:
            return await self._steps(request)
        if request.view not in FULL_VIEWS:
            raise InvalidArgument([("view", f"unknown history view {request.view}")])
        history = await run_blocking(self.executor, self.reader.history, request.user_id, request.limit)
        if history.entries:
            _observe_freshness(history.read_at_us, history.entries[-1].event.occurred_at_us)
        return features_pb2.GetUserHistoryResponse(
            user_id=history.user_id,
            events=[
                features_pb2.HistoryEvent(event=event_to_proto(h.event), category=h.category, tags=h.tags)
                for h in history.entries
            ],
            read_at=timestamp_from_us(history.read_at_us),
        )

    async def _steps(self, request: features_pb2.GetUserHistoryRequest) -> features_pb2.GetUserHistoryResponse:
        found = await run_blocking(self.executor, self.reader.steps, request.user_id, request.limit)
        steps = found.steps
        if steps.occurred_at_us:
            _observe_freshness(found.read_at_us, steps.occurred_at_us[-1])
        return features_pb2.GetUserHistoryResponse(
            user_id=found.user_id,
            steps=features_pb2.HistorySteps(
                item_ids=steps.item_ids, types=cast(list[common_pb2.EventType], steps.event_types),
                occurred_at_us=steps.occurred_at_us, categories=steps.categories,
            ),
            read_at=timestamp_from_us(found.read_at_us),
        )

    async def GetItems(
        self, request: features_pb2.GetItemsRequest, context: grpc.aio.ServicerContext
    ) -> features_pb2.GetItemsResponse:
        found, missing = await run_blocking(self.executor, self.reader.items, list(request.item_ids))
        return features_pb2.GetItemsResponse(
            items=[item_to_proto(i) for i in found], missing_item_ids=missing
        )


def _observe_freshness(read_at_us: int, newest_us: int) -> None:
    """How old the newest event of a served history is at read time."""
    metrics.FEATURE_FRESHNESS.observe(max(read_at_us - newest_us, 0) / 1e6)
