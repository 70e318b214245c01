"""Metrics, request ids, bearer-token auth and TLS (plain and mutual), on a real server."""

import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from app.processes import free_port
from services.ingestion.server import build_server
from shared.clients import ClientConfig, open_channel
from shared.settings import Settings
from shared.store import EventStore, create_store_engine
from shiftrec.v1 import common_pb2, ingestion_pb2, ingestion_pb2_grpc


def request(*event_ids: str) -> ingestion_pb2.IngestEventsRequest:
    return ingestion_pb2.IngestEventsRequest(events=[
        common_pb2.Event(event_id=e, user_id="u", item_id="i", type=common_pb2.EVENT_TYPE_CLICK,
                         occurred_at=Timestamp(seconds=int(time.time())))
        for e in event_ids
    ])


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_count_rpcs_by_code_and_events_by_outcome(serve_in_process, sqlite_url) -> None:
    metrics_port = free_port()
    settings = Settings(database_url=sqlite_url, metrics_port=metrics_port, max_batch_size=10)
    server = serve_in_process(lambda: build_server(settings, port=0))
    ok = 'shiftrec_rpc_requests_total{code="OK",method="/shiftrec.v1.IngestionService/IngestEvents"}'
    bad = 'shiftrec_rpc_requests_total{code="INVALID_ARGUMENT",method="/shiftrec.v1.IngestionService/IngestEvents"}'
    accepted, duplicate = 'shiftrec_events_total{outcome="accepted"}', 'shiftrec_events_total{outcome="duplicate"}'
    before = scrape(metrics_port)
    with open_channel(f"127.0.0.1:{server.port}") as channel:
        stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
        stub.IngestEvents(request("m1", "m2", "m1"), timeout=5)
        stub.IngestEvents(request("m2"), timeout=5)
        with pytest.raises(grpc.RpcError):
            stub.IngestEvents(request(), timeout=5)
    # grpc.aio's abort() sends the status before the interceptor's `finally` counts the call: the
    # client can hold the refusal a moment before the counter moves, so wait for it (bounded)
    deadline = time.monotonic() + 10
    after = scrape(metrics_port)
    while after.get(bad, 0) - before.get(bad, 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
        after = scrape(metrics_port)
    assert after[ok] - before.get(ok, 0) == 2
    assert after[bad] - before.get(bad, 0) == 1
    assert after[accepted] - before.get(accepted, 0) == 2
    assert after[duplicate] - before.get(duplicate, 0) == 2
    latency = 'shiftrec_rpc_latency_seconds_count{method="/shiftrec.v1.IngestionService/IngestEvents"}'
    assert after[latency] - before.get(latency, 0) == 3


def test_request_id_is_echoed_or_made_up(serve_in_process, sqlite_url) -> None:
    server = serve_in_process(lambda: build_server(Settings(database_url=sqlite_url), port=0))
    with open_channel(f"127.0.0.1:{server.port}") as channel:
        stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
        _, call = stub.IngestEvents.with_call(request("r1"), metadata=(("x-request-id", "abc-123"),), timeout=5)
        assert dict(call.initial_metadata())["x-request-id"] == "abc-123"
        _, call = stub.IngestEvents.with_call(request("r2"), timeout=5)
        assert len(dict(call.initial_metadata())["x-request-id"]) == 32


def test_bearer_token_guards_storefront_rpcs_not_health(serve_in_process, sqlite_url) -> None:
    server = serve_in_process(lambda: build_server(Settings(database_url=sqlite_url, auth_token="s3cret"), port=0))
    store = EventStore(create_store_engine(sqlite_url))
    target = f"127.0.0.1:{server.port}"
    for token in ("", "wrong", "s3cret-but-longer"):
        with open_channel(target, ClientConfig(token=token)) as channel:
            with pytest.raises(grpc.RpcError) as caught:
                ingestion_pb2_grpc.IngestionServiceStub(channel).IngestEvents(request("t1"), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert store.count_events() == 0
    with open_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with open_channel(target, ClientConfig(token="s3cret")) as channel:
        assert ingestion_pb2_grpc.IngestionServiceStub(channel).IngestEvents(request("t1"), timeout=5).accepted == 1
    assert store.count_events() == 1


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate (openssl)."""
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=shiftrec-test-ca")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", "san.ext")
    return d


def test_tls_server(serve_in_process, sqlite_url, pki) -> None:
    settings = Settings(database_url=sqlite_url, tls_cert_file=str(pki / "server.pem"),
                        tls_key_file=str(pki / "server.key"))
    server = serve_in_process(lambda: build_server(settings, port=0))
    target = f"127.0.0.1:{server.port}"
    with open_channel(target, ClientConfig(ca_file=str(pki / "ca.pem"))) as channel:
        assert ingestion_pb2_grpc.IngestionServiceStub(channel).IngestEvents(request("s1"), timeout=5).accepted == 1
    with open_channel(target) as channel:  # plaintext against TLS: no connection
        with pytest.raises(grpc.RpcError) as caught:
            ingestion_pb2_grpc.IngestionServiceStub(channel).IngestEvents(request("s2"), timeout=2)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert EventStore(create_store_engine(sqlite_url)).count_events() == 1


def test_mutual_tls_requires_a_client_certificate(serve_in_process, sqlite_url, pki) -> None:
    settings = Settings(database_url=sqlite_url, tls_cert_file=str(pki / "server.pem"),
                        tls_key_file=str(pki / "server.key"), tls_ca_file=str(pki / "ca.pem"))
    server = serve_in_process(lambda: build_server(settings, port=0))
    target = f"127.0.0.1:{server.port}"
    with open_channel(target, ClientConfig(ca_file=str(pki / "ca.pem"))) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            ingestion_pb2_grpc.IngestionServiceStub(channel).IngestEvents(request("x1"), timeout=2)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    client = ClientConfig(ca_file=str(pki / "ca.pem"), cert_file=str(pki / "client.pem"),
                          key_file=str(pki / "client.key"))
    with open_channel(target, client) as channel:
        assert ingestion_pb2_grpc.IngestionServiceStub(channel).IngestEvents(request("x2"), timeout=5).accepted == 1
    assert EventStore(create_store_engine(sqlite_url)).count_events() == 1


def test_tls_server_keeps_a_plaintext_health_port_for_probes(serve_in_process, sqlite_url, pki) -> None:
    health_port = free_port()
    settings = Settings(database_url=sqlite_url, tls_cert_file=str(pki / "server.pem"),
                        tls_key_file=str(pki / "server.key"), health_port=health_port)
    serve_in_process(lambda: build_server(settings, port=0))
    with open_channel(f"127.0.0.1:{health_port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="shiftrec.v1.IngestionService"), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as caught:  # only health lives there
            ingestion_pb2_grpc.IngestionServiceStub(channel).IngestEvents(request("h1"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert EventStore(create_store_engine(sqlite_url)).count_events() == 0
