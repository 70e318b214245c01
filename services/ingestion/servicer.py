"""IngestionService over gRPC: proto -> domain, call the core off the event loop, domain -> proto."""

from concurrent.futures import Executor

import grpc

from services.ingestion.ingest import IncomingEvent, Ingestor, Outcome
from shared import metrics
from shared.grpc_server import run_blocking
from shared.protos import item_from_proto, timestamp_us
from shiftrec.v1 import common_pb2, ingestion_pb2, ingestion_pb2_grpc


def incoming_event(event: common_pb2.Event) -> IncomingEvent:
    has_time = event.HasField("occurred_at")
    return IncomingEvent(
        event_id=event.event_id,
        user_id=event.user_id,
        item_id=event.item_id,
        event_type=event.type,
        occurred_at_us=timestamp_us(event.occurred_at) if has_time else None,
        occurred_at_nanos_valid=0 <= event.occurred_at.nanos <= 999_999_999,
        platform=event.platform,
        value=event.value if event.HasField("value") else None,
    )


class IngestionServicer(ingestion_pb2_grpc.IngestionServiceServicer):
    def __init__(self, ingestor: Ingestor, executor: Executor) -> None:
        self.ingestor = ingestor
        self.executor = executor

    async def IngestEvents(
        self, request: ingestion_pb2.IngestEventsRequest, context: grpc.aio.ServicerContext
    ) -> ingestion_pb2.IngestEventsResponse:
        events = [incoming_event(e) for e in request.events]
        results = await run_blocking(self.executor, self.ingestor.ingest_events, events)
        response = ingestion_pb2.IngestEventsResponse()
        counts = {1: 0, 2: 0, 3: 0}
        for r in results:
            response.results.add(event_id=r.event_id, status=int(r.outcome), reason=r.reason)
            counts[r.outcome] += 1
        response.accepted, response.duplicates, response.rejected = counts[1], counts[2], counts[3]
        for outcome, count in counts.items():
            metrics.EVENTS.labels(Outcome(outcome).name.lower()).inc(count)
        return response

    async def UpsertItems(
        self, request: ingestion_pb2.UpsertItemsRequest, context: grpc.aio.ServicerContext
    ) -> ingestion_pb2.UpsertItemsResponse:
        items = [item_from_proto(i) for i in request.items]
        upserted = await run_blocking(self.executor, self.ingestor.upsert_items, items)
        metrics.ITEMS_UPSERTED.inc(upserted)
        return ingestion_pb2.UpsertItemsResponse(upserted=upserted)

    async def DeleteUser(
        self, request: ingestion_pb2.DeleteUserRequest, context: grpc.aio.ServicerContext
    ) -> ingestion_pb2.DeleteUserResponse:
        deleted = await run_blocking(self.executor, self.ingestor.delete_user, request.user_id)
        metrics.EVENTS_ERASED.inc(deleted)
        return ingestion_pb2.DeleteUserResponse(deleted_events=deleted)
