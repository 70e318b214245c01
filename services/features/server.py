"""Wiring and lifecycle of the feature server: settings, store, gRPC server, graceful stop."""

from concurrent.futures import ThreadPoolExecutor

from services.features.history import FeatureReader
from services.features.servicer import FeatureServicer
from shared.grpc_server import GrpcServer, Service, server_from_settings
from shared.settings import Settings
from shared.store import open_store
from shiftrec.v1 import features_pb2, features_pb2_grpc

SERVICE_NAME = features_pb2.DESCRIPTOR.services_by_name["FeatureService"].full_name


def build_server(settings: Settings, port: int | None = None) -> GrpcServer:
    """A feature server reading the configured store."""
    store = open_store(settings.database_url, pool_size=settings.db_workers, migrate=settings.auto_migrate)
    executor = ThreadPoolExecutor(settings.db_workers, thread_name_prefix="features-db")
    servicer = FeatureServicer(FeatureReader(store, settings.history_length), executor)
    service = Service(SERVICE_NAME, features_pb2_grpc.add_FeatureServiceServicer_to_server, servicer)
    return server_from_settings(settings, [service], settings.features_port if port is None else port)

