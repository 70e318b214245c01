"""Wiring and lifecycle of the ingestion server: settings, store, gRPC server, graceful stop."""

import logging
from concurrent.futures import ThreadPoolExecutor

from services.ingestion.ingest import Ingestor
from services.ingestion.servicer import IngestionServicer
from shared.grpc_server import GrpcServer, Service, server_from_settings
from shared.settings import Settings
from shared.store import open_store
from shiftrec.v1 import ingestion_pb2, ingestion_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = ingestion_pb2.DESCRIPTOR.services_by_name["IngestionService"].full_name


def build_server(settings: Settings, port: int | None = None) -> GrpcServer:
    """An ingestion server over the configured store (migrated first if auto_migrate)."""
    store = open_store(settings.database_url, pool_size=settings.db_workers, migrate=settings.auto_migrate)
    executor = ThreadPoolExecutor(settings.db_workers, thread_name_prefix="ingest-db")
    servicer = IngestionServicer(Ingestor(store, settings.max_batch_size), executor)
    service = Service(SERVICE_NAME, ingestion_pb2_grpc.add_IngestionServiceServicer_to_server, servicer)
    return server_from_settings(settings, [service], settings.ingestion_port if port is None else port)

