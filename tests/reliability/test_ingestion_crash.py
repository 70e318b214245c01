"""kill -9 of the ingestion server, again and again, while clients stream batches with retries:
every acknowledged event is stored exactly once and nothing is stored that was never sent."""

import random
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest

from shared.clients import open_channel
from shiftrec.v1 import ingestion_pb2, ingestion_pb2_grpc
from tests.reliability.helpers import LEDGER, Proc, batch_events, stored_ids

KILLS = 5
CLIENTS = 3
BATCH = 100
MAX_BATCHES_PER_CLIENT = 150  # bounds the load however long the kills take
TIME_LIMIT_S = 120


class Client(threading.Thread):
    """Streams batches; a call that finally fails (after the channel's own retries) is queued
    and re-sent later with the same event ids."""

    def __init__(self, n: int, target: str, keep_going: threading.Event) -> None:
        super().__init__(daemon=True)
        self.n, self.target, self.keep_going = n, target, keep_going
        self.sent: set[str] = set()
        self.acked: list[str] = []  # ids the server answered ACCEPTED or DUPLICATE
        self.outcomes: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.resends = 0
        self.in_flight = 0  # calls sent and not yet answered (read by the killer)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def _run(self) -> None:
        pending: list[list] = []
        made = 0
        deadline = time.monotonic() + TIME_LIMIT_S
        with open_channel(self.target) as channel:
            stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
            while time.monotonic() < deadline:
                done_making = not self.keep_going.is_set() or made >= MAX_BATCHES_PER_CLIENT
                if pending and (made % 4 == 0 or done_making):  # a client that has made all its batches
                    # still re-sends the failed ones before it stops
                    batch = pending.pop(0)  # a failed batch again, same event ids
                    self.resends += 1
                elif self.keep_going.is_set() and made < MAX_BATCHES_PER_CLIENT:
                    batch = batch_events(f"c{self.n}-b{made}", BATCH, users=[f"crash-u{self.n}-{j}" for j in range(5)])
                    made += 1
                else:
                    return
                self.sent.update(e.event_id for e in batch)
                self.in_flight += 1
                try:
                    response = stub.IngestEvents(ingestion_pb2.IngestEventsRequest(events=batch), timeout=10)
                except grpc.RpcError as exc:
                    self.failures[exc.code().name] += 1
                    pending.append(batch)
                    time.sleep(0.1)
                    continue
                finally:
                    self.in_flight -= 1
                for result in response.results:
                    status = ingestion_pb2.EventStatus.Name(result.status)
                    self.outcomes[status] += 1
                    if result.status in (ingestion_pb2.EVENT_STATUS_ACCEPTED, ingestion_pb2.EVENT_STATUS_DUPLICATE):
                        self.acked.append(result.event_id)
                time.sleep(0.01)
        raise TimeoutError(f"client {self.n}: {len(pending)} batches still unacknowledged after {TIME_LIMIT_S}s")


@pytest.mark.timeout(300)
def test_kill9_ingestion_under_load_loses_and_duplicates_nothing(database_url: str, tmp_path: Path) -> None:
    backend = database_url.split(":", 1)[0].split("+")[0]
    server = Proc("ingestion", {"SHIFTREC_DATABASE_URL": database_url, "SHIFTREC_DB_WORKERS": "2"},
                  log_dir=tmp_path)
    server.start()
    keep_going = threading.Event()
    keep_going.set()
    clients = [Client(n, server.target, keep_going) for n in range(CLIENTS)]
    rng = random.Random(7)
    calls_hit = 0  # calls in flight at the moments of the kills
    try:
        for c in clients:
            c.start()
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.3, 1.0))  # clients are mid-stream: some calls are in flight
            calls_hit += sum(c.in_flight for c in clients)
            server.kill9()
            time.sleep(rng.uniform(0.0, 0.5))
            server.start()
        time.sleep(0.5)
        keep_going.clear()  # no new batches; clients drain what failed
        for c in clients:
            c.join(TIME_LIMIT_S + 30)
    finally:
        keep_going.clear()
        server.stop()
    for c in clients:
        assert not c.is_alive(), "a client did not finish"
        assert c.error is None, repr(c.error)

    sent = set().union(*(c.sent for c in clients))
    acked = [i for c in clients for i in c.acked]
    stored = stored_ids(database_url)
    stored_set = set(stored)
    failures = sum((c.failures for c in clients), Counter())
    outcomes = sum((c.outcomes for c in clients), Counter())
    LEDGER.record(f"kill9_ingestion[{backend}]", kills=server.kills, restarts=server.starts - 1,
                  events_sent=len(sent), events_acknowledged=len(set(acked)), rows_stored=len(stored),
                  distinct_stored=len(stored_set), failed_calls_resent=sum(c.resends for c in clients),
                  calls_in_flight_at_kills=calls_hit, failed_call_codes=dict(failures), outcomes=dict(outcomes))
    assert server.kills == KILLS
    assert outcomes["EVENT_STATUS_REJECTED"] == 0
    assert len(stored) == len(stored_set), "an event id is stored twice"
    assert set(acked) <= stored_set, f"{len(set(acked) - stored_set)} acknowledged events are lost"
    assert stored_set <= sent, "the store holds events nobody sent"
    assert stored_set == sent  # every failed batch was re-sent until acknowledged
    # The channel's retry policy absorbs most kills; what matters is that calls were in flight.
    assert calls_hit > 0, "the kills never hit a call: the test proved nothing"
