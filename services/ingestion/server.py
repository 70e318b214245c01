"""Wiring and lifecycle of the ingestion server: settings, store, gRPC server, graceful stop."""

import logging
from concurrent.futures import ThreadPoolExecutor

from services.ingestion.ingest import Ingestor
from services.ingestion.servicer import IngestionServicer
from shared.grpc_server import GrpcServer, Service
from shared.settings import Settings
from shared.store import EventStore, create_store_engine, upgrade_schema
from shiftrec.v1 import ingestion_pb2, ingestion_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = ingestion_pb2.DESCRIPTOR.services_by_name["IngestionService"].full_name


def build_server(settings: Settings, port: int | None = None) -> GrpcServer:
    """An ingestion server over the configured store (migrated first if auto_migrate)."""
    engine = create_store_engine(settings.database_url, pool_size=settings.db_workers)
    if settings.auto_migrate:
        upgrade_schema(engine)
    ingestor = Ingestor(EventStore(engine), settings.max_batch_size)
    executor = ThreadPoolExecutor(settings.db_workers, thread_name_prefix="ingest-db")
    servicer = IngestionServicer(ingestor, executor)
    return GrpcServer(
        [Service(SERVICE_NAME, ingestion_pb2_grpc.add_IngestionServiceServicer_to_server, servicer)],
        host=settings.bind_host,
        port=settings.ingestion_port if port is None else port,
        max_message_bytes=settings.max_message_bytes,
        max_concurrent_rpcs=settings.max_concurrent_rpcs,
        stop_grace_seconds=settings.stop_grace_seconds,
    )


async def serve(settings: Settings, port: int | None = None) -> None:
    """Run the ingestion server until SIGTERM/SIGINT."""
    server = build_server(settings, port)
    await server.start()
    log.info("ingestion serving", extra={"database": _safe_url(settings.database_url)})
    await server.serve_until_signal()


def _safe_url(url: str) -> str:
    from sqlalchemy import make_url

    return make_url(url).render_as_string(hide_password=True)
