"""`shiftrec serve ingestion` as a real process: health, ingest, graceful stop on SIGTERM."""

import os
import signal
import subprocess
import time
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from app.processes import free_port, shiftrec_command, wait_serving
from shared.store import EventStore, create_store_engine
from shiftrec.v1 import common_pb2, ingestion_pb2, ingestion_pb2_grpc


def test_serve_ingest_and_stop_gracefully(tmp_path: Path) -> None:
    port = free_port()
    url = f"sqlite:///{tmp_path / 'e2e.db'}"
    env = {**os.environ, "SHIFTREC_DATABASE_URL": url, "SHIFTREC_LOG_FORMAT": "json"}
    proc = subprocess.Popen(
        [shiftrec_command(), "serve", "ingestion", "--port", str(port)],
        env=env, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_serving(f"127.0.0.1:{port}", "shiftrec.v1.IngestionService")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
            event = common_pb2.Event(
                event_id="e1", user_id="u1", item_id="i1", type=common_pb2.EVENT_TYPE_PURCHASE,
                occurred_at=Timestamp(seconds=int(time.time())),
            )
            response = stub.IngestEvents(ingestion_pb2.IngestEventsRequest(events=[event]), timeout=10)
            assert response.accepted == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    logs = proc.stderr.read() if proc.stderr else ""
    assert '"msg": "stopped"' in logs
    assert EventStore(create_store_engine(url)).count_events() == 1
