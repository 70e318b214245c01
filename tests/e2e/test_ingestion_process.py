"""`shiftrec serve ingestion` as a real process: health, ingest, graceful stop on SIGTERM."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.store import EventStore, create_store_engine
from shiftrec.v1 import common_pb2, ingestion_pb2, ingestion_pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_serving(channel: grpc.Channel, service: str, timeout: float = 30) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{service} not SERVING after {timeout}s")
        time.sleep(0.1)


def test_serve_ingest_and_stop_gracefully(tmp_path: Path) -> None:
    port = free_port()
    url = f"sqlite:///{tmp_path / 'e2e.db'}"
    env = {**os.environ, "SHIFTREC_DATABASE_URL": url, "SHIFTREC_LOG_FORMAT": "json"}
    shiftrec = Path(sys.executable).with_name("shiftrec")
    proc = subprocess.Popen(
        [str(shiftrec), "serve", "ingestion", "--port", str(port)],
        env=env, stderr=subprocess.PIPE, text=True,
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            wait_serving(channel, "shiftrec.v1.IngestionService")
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
