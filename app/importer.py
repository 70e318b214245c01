"""Client side of `shiftrec import`: sends dataset records through IngestionService in batches."""

import itertools
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from tqdm import tqdm

from shared.clients import ClientConfig, open_channel
from shared.protos import event_to_proto, item_to_proto
from shared.store import EventRecord, ItemRecord
from shiftrec.v1 import ingestion_pb2, ingestion_pb2_grpc


@dataclass
class ImportReport:
    items_upserted: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)  # rejection reason -> count


def _batches(records: Iterable[EventRecord], size: int) -> Iterator[list[EventRecord]]:
    iterator = iter(records)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def import_records(
    target: str,
    events: Iterable[EventRecord],
    items: Sequence[ItemRecord] = (),
    *,
    batch_size: int = 500,
    in_flight: int = 4,
    total: int | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    client: ClientConfig | None = None,
) -> ImportReport:
    """Upsert `items`, then send `events` in batches with up to `in_flight` calls outstanding.

    Retries of UNAVAILABLE come from the channel's retry policy; re-running an import is a no-op
    because event ids are deterministic.
    """
    report = ImportReport()
    with open_channel(target, client) as channel:
        stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            response = stub.UpsertItems(
                ingestion_pb2.UpsertItemsRequest(items=[item_to_proto(i) for i in chunk]),
                timeout=timeout,
                wait_for_ready=True,
            )
            report.items_upserted += response.upserted
        pending: list[Future] = []
        with tqdm(total=total, unit="ev", desc="import", disable=not progress) as bar:

            def collect(future: Future) -> None:
                response = future.result()
                report.accepted += response.accepted
                report.duplicates += response.duplicates
                report.rejected += response.rejected
                for result in response.results:
                    if result.status == ingestion_pb2.EVENT_STATUS_REJECTED:
                        report.reasons[result.reason] += 1
                bar.update(len(response.results))

            for batch in _batches(events, batch_size):
                request = ingestion_pb2.IngestEventsRequest(events=[event_to_proto(e) for e in batch])
                pending.append(
                    stub.IngestEvents.future(request, timeout=timeout, wait_for_ready=True)
                )
                if len(pending) >= in_flight:
                    collect(pending.pop(0))
            for future in pending:
                collect(future)
    return report



