"""Wiring shared by the three servers: interceptors (request ids, metrics, bearer-token auth,
domain errors -> status codes), TLS, health, reflection, graceful stop."""

import asyncio
import contextvars
import hmac
import inspect
import logging
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeAlias, TypeVar, cast

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from shared import metrics
from shared.errors import (
    ConfigurationError,
    FailedPrecondition,
    InvalidArgument,
    ShiftRecError,
    Unavailable,
)
from shared.logs import REQUEST_ID, configure_logging
from shared.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
REQUEST_ID_HEADER = "x-request-id"
# Health and reflection stay open: probes and tooling carry no token.
PROTECTED_PREFIX = "/shiftrec.v1."


async def run_blocking(executor: Executor, fn: Callable[..., T], *args: object) -> T:
    """Run a blocking core call (database, model) on `executor`, off the event loop, keeping the
    caller's context (the request id) for its logs."""
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(executor, partial(context.run, fn, *args))


_CODES: dict[type[ShiftRecError], int] = {
    InvalidArgument: code_pb2.INVALID_ARGUMENT,
    Unavailable: code_pb2.UNAVAILABLE,
    FailedPrecondition: code_pb2.FAILED_PRECONDITION,
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


Behaviour = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any] | None"  # quoted: subscriptable in the stubs only
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]


class UnaryInterceptor(grpc.aio.ServerInterceptor):
    """Base for interceptors of unary-unary methods (health Watch and reflection pass through)."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        return grpc.unary_unary_rpc_method_handler(
            self.wrap(cast(Behaviour, handler.unary_unary), handler_call_details),
            request_deserializer=self.deserializer(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def wrap(self, behaviour: Behaviour, details: grpc.HandlerCallDetails) -> Behaviour:
        raise NotImplementedError

    def deserializer(self, inner: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
        """How requests are decoded; unchanged unless an interceptor needs otherwise."""
        return inner


class ObservingInterceptor(UnaryInterceptor):
    """Outermost: takes the caller's x-request-id (or makes one) for logs and downstream calls,
    echoes it, and records count and latency by method and status code."""

    def wrap(self, behaviour: Behaviour, details: grpc.HandlerCallDetails) -> Behaviour:
        method = details.method
        incoming = dict(details.invocation_metadata or ())
        request_id = str(incoming.get(REQUEST_ID_HEADER) or uuid.uuid4().hex)[:64]

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = REQUEST_ID.set(request_id)
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                response = await behaviour(request, context)
                # Headers go out only with a success: gRPC never retries a call once response
                # headers have arrived, and a failed call must stay retryable.
                await context.send_initial_metadata(((REQUEST_ID_HEADER, request_id),))
                return response
            except BaseException:
                code = context.code() or grpc.StatusCode.UNKNOWN  # set by abort()
                if not isinstance(code, grpc.StatusCode):
                    code = grpc.StatusCode.UNKNOWN
                raise
            finally:
                metrics.RPC_LATENCY.labels(method).observe(time.perf_counter() - start)
                metrics.RPC_REQUESTS.labels(method, code.name).inc()
                REQUEST_ID.reset(token)

        return observed


def _skip_body(data: bytes) -> None:
    """The request decoder of a refused call: its bytes are never parsed."""


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED unless `authorization: Bearer <token>` matches (shiftrec.v1 RPCs only).

    A refused call gets a handler of its own, decided from the metadata alone: its request is
    never decoded, and it never reaches the interceptors behind this one (the call limit)."""

    def __init__(self, token: str) -> None:
        self.expected = f"Bearer {token}".encode()

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        if not handler_call_details.method.startswith(PROTECTED_PREFIX):
            return await continuation(handler_call_details)
        given = str(dict(handler_call_details.invocation_metadata or ()).get("authorization", "")).encode()
        if hmac.compare_digest(given, self.expected):
            return await continuation(handler_call_details)

        async def refused(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")

        return grpc.unary_unary_rpc_method_handler(refused, request_deserializer=_skip_body)


class CallLimitInterceptor(grpc.aio.ServerInterceptor):
    """RESOURCE_EXHAUSTED at once beyond the calls a server takes at the same time.

    shiftrec.v1 calls (behind the token check: only authenticated ones get here) share
    `max_calls`. Health Watch and reflection streams, open to anyone, have their own
    `max_open_streams`, so however many of them are held, authenticated calls and probes
    (health Check, which ends at once and is never refused) keep their capacity.
    One event loop serves all calls, so plain counters suffice."""

    def __init__(self, max_calls: int, max_open_streams: int) -> None:
        self.limits = {"calls": max_calls, "streams": max_open_streams}
        self.in_flight = {"calls": 0, "streams": 0}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        if handler_call_details.method.startswith(PROTECTED_PREFIX):
            pool = "calls"
        elif handler.unary_unary is None:
            pool = "streams"
        else:
            return handler  # health Check: answered from memory at once
        kinds = {
            "unary_unary": grpc.unary_unary_rpc_method_handler,
            "unary_stream": grpc.unary_stream_rpc_method_handler,
            "stream_unary": grpc.stream_unary_rpc_method_handler,
            "stream_stream": grpc.stream_stream_rpc_method_handler,
        }
        kind = next(k for k in kinds if getattr(handler, k) is not None)
        return kinds[kind](
            self._limited(getattr(handler, kind), pool),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _limited(self, behaviour: Callable[..., Any], pool: str) -> Callable[..., Any]:
        async def take_slot(context: grpc.aio.ServicerContext) -> None:
            if self.in_flight[pool] >= self.limits[pool]:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"server busy: {pool} at capacity")
            self.in_flight[pool] += 1

        if inspect.isasyncgenfunction(behaviour):  # a streaming response written by `yield`

            async def limited_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                await take_slot(context)
                try:
                    async for response in behaviour(request, context):
                        yield response
                finally:
                    self.in_flight[pool] -= 1

            return limited_stream

        async def limited(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await take_slot(context)
            try:
                return await behaviour(request, context)
            finally:
                self.in_flight[pool] -= 1

        return limited


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a request whose bytes do not parse as the method's message."""

    reason: str


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """grpc.aio decodes requests before any interceptor runs and answers UNKNOWN when that
    fails; decode here instead, so a malformed request becomes INVALID_ARGUMENT."""
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - DecodeError, or UnicodeDecodeError for a bad string
            return Undecodable(str(exc) or "cannot parse the request")

    return decode


class DomainErrorInterceptor(UnaryInterceptor):
    """Maps domain exceptions raised by servicer methods to status codes, in one place, and
    malformed requests to INVALID_ARGUMENT.

    Anything unexpected is logged with its traceback and answered INTERNAL without details.
    """

    def deserializer(self, inner: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
        return tolerant(inner)

    def wrap(self, behaviour: Behaviour, details: grpc.HandlerCallDetails) -> Behaviour:
        method = details.method

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                if isinstance(request, Undecodable):
                    raise InvalidArgument([("request", f"malformed request: {request.reason}")])
                return await behaviour(request, context)
            except grpc.aio.AbortError:
                raise
            except ShiftRecError as error:
                status = error_status(error)
                log.info("rpc refused", extra={"rpc": method, "code": status.code.name, "reason": str(error)})
                await context.abort(status.code, status.details, status.trailing_metadata)
            except Exception:
                log.exception("rpc crashed", extra={"rpc": method})
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")

        return guarded


@dataclass
class Service:
    """One gRPC service to mount: its full name and how to add its servicer."""

    name: str
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    servicer: Any


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the server's certificate and key; a CA bundle makes client certificates
    required (mutual TLS)."""

    cert_file: str
    key_file: str
    ca_file: str | None = None

    def server_credentials(self) -> grpc.ServerCredentials:
        ca = Path(self.ca_file).read_bytes() if self.ca_file else None
        return grpc.ssl_server_credentials(
            [(Path(self.key_file).read_bytes(), Path(self.cert_file).read_bytes())],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )


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
        max_open_streams: int = 64,
        auth_token: str | None = None,
        tls: TlsFiles | None = None,
        health_port: int = 0,
        max_connection_age_seconds: float = 300.0,
    ) -> None:
        self.services = list(services)
        self.stop_grace_seconds = stop_grace_seconds
        interceptors: list[grpc.aio.ServerInterceptor] = [ObservingInterceptor()]
        if auth_token:
            interceptors.append(BearerTokenInterceptor(auth_token))
        interceptors += [CallLimitInterceptor(max_concurrent_rpcs, max_open_streams), DomainErrorInterceptor()]
        self.server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.so_reuseport", 0),
                ("grpc.max_connection_age_ms", int(max_connection_age_seconds * 1000)),
                ("grpc.max_connection_age_grace_ms", int(stop_grace_seconds * 1000)),
            ],
        )
        for service in self.services:
            service.add_to_server(service.servicer, self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [s.name for s in self.services]
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server)
        address = f"{host}:{port}"
        if tls is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, tls.server_credentials())
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        # Probes cannot speak TLS: the same health servicer, alone, on a plaintext port.
        self.health_server: grpc.aio.Server | None = None
        if health_port:
            self.health_server = grpc.aio.server(
                interceptors=[CallLimitInterceptor(max_concurrent_rpcs, max_open_streams)],
                options=[("grpc.so_reuseport", 0)],
            )
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            if self.health_server.add_insecure_port(f"{host}:{health_port}") == 0:
                raise OSError(f"cannot listen on {host}:{health_port}")

    async def start(self, serving: bool = True) -> None:
        """Start listening; health says SERVING for every service unless `serving` is False."""
        await self.server.start()
        if self.health_server is not None:
            await self.health_server.start()
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
        if self.health_server is not None:
            await self.health_server.stop(0)
        log.info("stopped", extra={"port": self.port})

    async def serve_until_signal(self) -> None:
        """Run until SIGTERM or SIGINT, then stop gracefully."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await self.stop()


def tls_from_settings(settings: Settings) -> TlsFiles | None:
    """The TLS files to serve with, or None when no TLS setting is given at all.

    TLS never fails open: any TLS setting without the others it needs (a certificate without
    its key, a CA bundle alone), or a file that cannot be read, is a ConfigurationError naming
    what is missing, instead of serving plaintext."""
    given = {
        "SHIFTREC_TLS_CERT_FILE": settings.tls_cert_file,
        "SHIFTREC_TLS_KEY_FILE": settings.tls_key_file,
        "SHIFTREC_TLS_CA_FILE": settings.tls_ca_file,
    }
    if not any(given.values()):
        return None
    missing = [name for name in ("SHIFTREC_TLS_CERT_FILE", "SHIFTREC_TLS_KEY_FILE") if not given[name]]
    if missing:
        present = [name for name, value in given.items() if value]
        raise ConfigurationError(
            f"incomplete TLS configuration: {' and '.join(missing)} not set (only {', '.join(present)}); "
            "refusing to serve plaintext"
        )
    unreadable = [f"{name}={value}" for name, value in given.items() if value and not os.access(value, os.R_OK)]
    if unreadable:
        raise ConfigurationError(f"TLS file not readable: {', '.join(unreadable)}; refusing to start")
    return TlsFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file or None)


def server_from_settings(settings: Settings, services: Iterable[Service], port: int) -> GrpcServer:
    """A GrpcServer with the limits, grace period, token and TLS from `settings`; starts the
    process's /metrics endpoint when configured. Refuses (ConfigurationError) a partial TLS
    configuration."""
    tls = tls_from_settings(settings)
    metrics.serve_metrics(settings.metrics_port, settings.bind_host)
    return GrpcServer(
        services,
        host=settings.bind_host,
        port=port,
        max_message_bytes=settings.max_message_bytes,
        max_concurrent_rpcs=settings.max_concurrent_rpcs,
        max_open_streams=settings.max_open_streams,
        stop_grace_seconds=settings.stop_grace_seconds,
        auth_token=settings.auth_token or None,
        tls=tls,
        health_port=settings.health_port,
        max_connection_age_seconds=settings.max_connection_age_seconds,
    )


class Server(Protocol):
    """What a service's build_server returns: GrpcServer, or a wrapper around one."""

    async def start(self) -> None: ...

    async def serve_until_signal(self) -> None: ...


def serve(build_server: Callable[[Settings, int | None], Server], settings: Settings,
          port: int | None = None) -> None:
    """Configure logging from `settings`, then run the built server until SIGTERM or SIGINT
    (what `shiftrec serve <service>` and `python -m services.<service>` do)."""
    configure_logging(settings.log_level, settings.log_format)

    async def run() -> None:
        server = build_server(settings, port)
        await server.start()
        await server.serve_until_signal()

    asyncio.run(run())
