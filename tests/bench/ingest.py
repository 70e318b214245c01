"""make bench-ingest: events/s through IngestionService (gRPC, batches of 500, concurrent
clients) into SQLite and PostgreSQL, beside the raw insert rate of the same database.

Bounded (a fixed number of events per run), loopback only, stops by itself.
"""

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import psycopg
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import create_engine, make_url, text

from app.processes import ServiceProcess
from shared.clients import open_channel
from shared.store import EventRecord, EventStore, create_store_engine, upgrade_schema
from shiftrec.v1 import common_pb2, ingestion_pb2, ingestion_pb2_grpc
from tests.bench.common import cpu_seconds, print_table, write_json

BASE_US = 1_700_000_000_000_000


def run_threads(fn, n: int) -> float:
    """Run fn(0) .. fn(n - 1) in n threads; return the wall seconds until all are done."""
    threads = [threading.Thread(target=fn, args=(i,)) for i in range(n)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def synthetic_events(n: int, tag: str) -> list[EventRecord]:
    """A storefront-like stream: 20k users, 10k items, mixed behaviour types."""
    return [
        EventRecord(
            event_id=f"{tag}-{i}",
            user_id=f"user-{(i * 7919) % 20_000}",
            item_id=f"item-{(i * 104_729) % 10_000}",
            event_type=1 + (i % 6),
            occurred_at_us=BASE_US + i * 1_000,
            platform="bench",
            value=float(i % 50) if i % 3 == 0 else None,
        )
        for i in range(n)
    ]


def to_request(batch: list[EventRecord]) -> ingestion_pb2.IngestEventsRequest:
    events = []
    for e in batch:
        message = common_pb2.Event(
            event_id=e.event_id, user_id=e.user_id, item_id=e.item_id, type=e.event_type,
            occurred_at=Timestamp(seconds=e.occurred_at_us // 1_000_000), platform=e.platform,
        )
        if e.value is not None:
            message.value = e.value
        events.append(message)
    return ingestion_pb2.IngestEventsRequest(events=events)


def raw_rate(url: str, events: list[EventRecord], batch: int, writers: int) -> float:
    """The same INSERT the service issues, batches of `batch` from `writers` threads, with no
    gRPC and no validation: what the database gives this statement at this concurrency."""
    engine = create_store_engine(url, pool_size=writers)
    upgrade_schema(engine)
    store = EventStore(engine)
    batches = [events[i : i + batch] for i in range(0, len(events), batch)]

    def writer(n: int) -> None:
        for chunk in batches[n::writers]:
            store.insert_events(chunk, received_at_us=BASE_US)

    elapsed = run_threads(writer, writers)
    engine.dispose()
    return len(events) / elapsed


def bulk_rate(url: str, events: list[EventRecord]) -> float:
    """The database's own fastest bulk path, for reference: COPY (PostgreSQL), or one
    executemany in one transaction (SQLite)."""
    engine = create_store_engine(url)
    upgrade_schema(engine)
    rows = [(e.event_id, e.user_id, e.item_id, e.event_type, e.occurred_at_us, BASE_US, e.platform, e.value)
            for e in events]
    start = time.perf_counter()
    bulk_insert(engine, url, rows)
    elapsed = time.perf_counter() - start
    engine.dispose()
    return len(events) / elapsed


def bulk_insert(engine, url: str, rows: list[tuple]) -> None:
    """Event rows (event_id, user_id, item_id, event_type, occurred_at_us, received_at_us,
    platform, value) by the database's bulk path: COPY, or one executemany in one transaction."""
    columns = "event_id, user_id, item_id, event_type, occurred_at_us, received_at_us, platform, value"
    if engine.dialect.name == "postgresql":
        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(dsn) as conn, conn.cursor().copy(f"COPY events ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    else:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"INSERT INTO events ({columns}) VALUES (?,?,?,?,?,?,?,?)", rows)


def grpc_rate(url: str, events: list[EventRecord], batch: int, clients: int) -> tuple[float, float]:
    """Events/s through a real `shiftrec serve ingestion` process, and the server's CPU
    microseconds per event (user + system): what the service costs, apart from the box's
    speed and what the clients take of it."""
    requests = [to_request(events[i : i + batch]) for i in range(0, len(events), batch)]
    accepted = [0] * clients
    env = {"SHIFTREC_DATABASE_URL": url}
    with ServiceProcess("ingestion", env) as server:

        def client(n: int) -> None:
            with open_channel(server.target) as channel:
                stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
                for request in requests[n::clients]:
                    accepted[n] += stub.IngestEvents(request, timeout=60).accepted

        cpu_before = cpu_seconds(server.proc.pid)
        elapsed = run_threads(client, clients)
        cpu_after = cpu_seconds(server.proc.pid)
    cpu_us = 1e6 * (cpu_after - cpu_before) / len(events) if cpu_before is not None and cpu_after is not None else float("nan")
    store = EventStore(create_store_engine(url))
    stored = store.count_events()
    store.engine.dispose()
    if stored != len(events) or sum(accepted) != len(events):
        raise RuntimeError(f"sent {len(events)}, acknowledged {sum(accepted)}, stored {stored}")
    return len(events) / elapsed, cpu_us


def fresh_postgres(server_url: str) -> tuple[str, callable]:
    name = f"shiftrec_bench_{os.getpid()}_{time.monotonic_ns()}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(server_url).set(database=name).render_as_string(hide_password=False), drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--postgres-url", default=os.environ.get(
        "SHIFTREC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--out", default="var/bench/ingest.json")
    args = parser.parse_args()

    results = []
    backends = ["sqlite", "postgresql"]
    for backend in backends:
        measured: dict[str, float] = {}
        for phase in ("raw", "bulk", "grpc"):
            events = synthetic_events(args.events, f"{backend}-{phase}")
            if backend == "sqlite":
                tmp = tempfile.TemporaryDirectory()
                url, cleanup = f"sqlite:///{Path(tmp.name) / 'bench.db'}", tmp.cleanup
            else:
                try:
                    url, cleanup = fresh_postgres(args.postgres_url)
                except Exception as exc:  # noqa: BLE001
                    print(f"PostgreSQL skipped: {exc}")
                    break
            try:
                if phase == "raw":
                    measured["raw"] = raw_rate(url, events, args.batch, args.clients)
                elif phase == "bulk":
                    measured["bulk"] = bulk_rate(url, events)
                else:
                    measured["grpc"], measured["server_cpu_us"] = grpc_rate(url, events, args.batch, args.clients)
            finally:
                cleanup()
        if len(measured) == 4:
            results.append({
                "database": backend,
                "grpc_events_per_s": measured["grpc"],
                "server_cpu_us_per_event": measured["server_cpu_us"],
                "raw_insert_events_per_s": measured["raw"],
                "bulk_events_per_s": measured["bulk"],
                "grpc_over_raw": measured["grpc"] / measured["raw"],
                "grpc_over_bulk": measured["grpc"] / measured["bulk"],
            })
    print(f"\n{args.events:,} events per run, batches of {args.batch}, {args.clients} concurrent clients, "
          f"{os.cpu_count()} CPUs\n")
    print_table(
        ["database", "gRPC ev/s", "server CPU µs/event", "raw insert ev/s", "gRPC/raw",
         "bulk ev/s (COPY / executemany)", "gRPC/bulk"],
        [[r["database"], r["grpc_events_per_s"], r["server_cpu_us_per_event"], r["raw_insert_events_per_s"],
          r["grpc_over_raw"], r["bulk_events_per_s"], r["grpc_over_bulk"]] for r in results],
    )
    write_json(args.out, {"benchmark": "ingest", "events": args.events, "batch": args.batch,
                          "clients": args.clients, "results": results})


if __name__ == "__main__":
    main()
