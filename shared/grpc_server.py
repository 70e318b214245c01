"""Wiring shared by the three servers: interceptors, health, reflection, graceful stop."""

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from shared.settings import Settings
from shared.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    ShiftRecError,
    Unavailable,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


async def run_blocking(executor: Executor, fn: Callable[..., T], *args: object) -> T:
    """Run a blocking core call (database, model) on `executor`, off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

_CODES: dict[type[ShiftRecError], int] = {
    InvalidArgument: code_pb2.INVALID_ARGUMENT,
    Unavailable: code_pb2.UNAVAILABLE,
    FailedPrecondition: code_pb2.FAILED_PRECONDITION,
    ResourceExhausted: code_pb2.RESOURCE_EXHAUSTED,
}


def error_status(error: ShiftRecError) -> grpc.Status:
    """The gRPC status for a domain error; field violations travel as google.rpc.BadRequest."""
    code = next(c for t, c in _CODES.items() if isinstance(error, t))
    details = []
    if isinstance(error, InvalidArgument):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in error.violations
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(bad_request)
        details.append(detail)
    return rpc_status.to_status(status_pb2.Status(code=code, message=str(error), details=details))


class DomainErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps domain exceptions raised by unary servicer methods to status codes, in one place.

    Anything unexpected is logged with its traceback and answered INTERNAL without details.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        inner = handler.unary_unary

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await inner(request, context)
            except grpc.aio.AbortError:
                raise
            except ShiftRecError as error:
                status = error_status(error)
                log.info("rpc refused", extra={"rpc": method, "code": status.code.name, "reason": str(error)})
                await context.abort(status.code, status.details, status.trailing_metadata)
            except Exception:
                log.exception("rpc crashed", extra={"rpc": method})
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


@dataclass
class Service:
    """One gRPC service to mount: its full name and how to add its servicer."""

    name: str
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    servicer: Any


class GrpcServer:
    """An aio server with health (per service name), reflection and graceful stop."""

    def __init__(
        self,
        services: Iterable[Service],
        *,
        host: str,
        port: int,
        max_message_bytes: int,
        max_concurrent_rpcs: int,
        stop_grace_seconds: float,
        interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
    ) -> None:
        self.services = list(services)
        self.stop_grace_seconds = stop_grace_seconds
        self.server = grpc.aio.server(
            interceptors=[DomainErrorInterceptor(), *interceptors],
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=max_concurrent_rpcs,
        )
        for service in self.services:
            service.add_to_server(service.servicer, self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [s.name for s in self.services]
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server)
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"cannot listen on {host}:{port}")

    async def start(self, serving: bool = True) -> None:
        """Start listening; health says SERVING for every service unless `serving` is False."""
        await self.server.start()
        await self.set_serving(serving)
        log.info("listening", extra={"port": self.port, "services": [s.name for s in self.services]})

    async def set_serving(self, serving: bool) -> None:
        """Report SERVING / NOT_SERVING for each service and the server as a whole ("")."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *(s.name for s in self.services)]:
            await self.health.set(name, status)

    async def stop(self) -> None:
        """Stop taking calls, let in-flight ones finish within the grace period."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.stop_grace_seconds)
        log.info("stopped", extra={"port": self.port})

    async def serve_until_signal(self) -> None:
        """Run until SIGTERM or SIGINT, then stop gracefully."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await self.stop()


def server_from_settings(
    settings: Settings,
    services: Iterable[Service],
    port: int,
    interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
) -> GrpcServer:
    """A GrpcServer with the limits and grace period from `settings`."""
    return GrpcServer(
        services,
        host=settings.bind_host,
        port=port,
        max_message_bytes=settings.max_message_bytes,
        max_concurrent_rpcs=settings.max_concurrent_rpcs,
        stop_grace_seconds=settings.stop_grace_seconds,
        interceptors=interceptors,
    )
