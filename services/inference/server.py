"""Wiring and lifecycle of the inference server: model registry with hot reload, feature
client, gRPC server (NOT_SERVING until a model is loaded), graceful stop."""

import asyncio
import contextlib
import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor

from services.inference.features_client import FeatureClient
from services.inference.ranking import Inference
from services.inference.registry import ModelRegistry
from services.inference.servicer import InferenceServicer
from shared.clients import ClientConfig
from shared.grpc_server import GrpcServer, Service, run_blocking, server_from_settings
from shared.settings import Settings
from shiftrec.v1 import inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name


class InferenceServer:
    """The gRPC server plus the task that watches the model directory."""

    def __init__(self, settings: Settings, port: int | None = None) -> None:
        self.settings = settings
        self.registry = ModelRegistry(
            settings.model_dir, device=settings.inference_device, threads=settings.inference_threads,
            batch_max=settings.inference_batch_max, batch_wait_s=settings.inference_batch_wait_ms / 1000,
            batch_threads=settings.inference_batch_threads,
        )
        self.executor = ThreadPoolExecutor(settings.inference_workers, thread_name_prefix="inference")
        self.loader = ThreadPoolExecutor(1, thread_name_prefix="model-loader")
        self.features = FeatureClient(
            settings.features_target, settings.features_timeout_seconds, settings.inference_history_limit,
            dataclasses.replace(ClientConfig.from_settings(settings), retries=False),
        )
        servicer = InferenceServicer(Inference(self.registry, settings.recent_window), self.features, self.executor)
        service = Service(SERVICE_NAME, inference_pb2_grpc.add_InferenceServiceServicer_to_server, servicer)
        self.grpc: GrpcServer = server_from_settings(
            settings, [service], settings.inference_port if port is None else port
        )
        self.port = self.grpc.port
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await run_blocking(self.loader, self.registry.refresh)
        # Connect to features before taking traffic, so the first calls need not fall back.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.features.channel.channel_ready(), timeout=5)
        await self.grpc.start(serving=self.registry.loaded)
        self._watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        """Poll LATEST; a newly loaded model makes (or keeps) the service SERVING."""
        while True:
            await asyncio.sleep(self.settings.model_poll_seconds)
            try:
                if await run_blocking(self.loader, self.registry.refresh):
                    await self.grpc.set_serving(True)
            except Exception:  # keep watching whatever a package does to the loader
                log.exception("model refresh failed")

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self.grpc.stop()
        await self.features.close()

    async def serve_until_signal(self) -> None:
        await self.grpc.serve_until_signal()
        if self._watcher is not None:
            self._watcher.cancel()
        await self.features.close()


def build_server(settings: Settings, port: int | None = None) -> InferenceServer:
    return InferenceServer(settings, port)

