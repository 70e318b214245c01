"""Client channels for ShiftRec's services: gRPC's own retry policy for UNAVAILABLE, optional
TLS (mutual when a client certificate is given), the bearer token and the request id.

Retrying IngestEvents is safe because event ids are idempotency keys: a batch whose
acknowledgement was lost is stored once and reported as duplicates the second time.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import grpc

from shared.logs import REQUEST_ID
from shared.settings import Settings

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024

RETRY_POLICY = {
    "maxAttempts": 5,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


# A retry budget per channel (gRPC's retryThrottling): each failed attempt costs a token, each
# success gives back 0.1; retries stop while half the tokens are gone. A blip is still retried
# five times, but a lasting outage sees about one attempt per call instead of five.
RETRY_THROTTLING = {"maxTokens": 10, "tokenRatio": 0.1}


def service_config(retries: bool) -> str:
    """round_robin over every address a name resolves to (a headless Service's pods) and, for
    callers at the edge, the retry policy. Hops inside ShiftRec do not retry: the caller at the
    edge does, and retries at every hop would multiply."""
    method: dict[str, object] = {
        "name": [
            {"service": "shiftrec.v1.IngestionService"},
            {"service": "shiftrec.v1.FeatureService"},
            {"service": "shiftrec.v1.InferenceService"},
        ]
    }
    config: dict[str, object] = {"loadBalancingConfig": [{"round_robin": {}}], "methodConfig": [method]}
    if retries:
        method["retryPolicy"] = RETRY_POLICY
        config["retryThrottling"] = RETRY_THROTTLING
    return json.dumps(config)



@dataclass(frozen=True)
class ClientConfig:
    """How to reach a ShiftRec server: TLS when `ca_file` is set, a client certificate for
    mutual TLS when `cert_file`/`key_file` are set, a bearer token when `token` is set."""

    token: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    retries: bool = True  # gRPC's retry policy for UNAVAILABLE (off for hops inside ShiftRec)

    @classmethod
    def from_settings(cls, settings: Settings) -> "ClientConfig":
        return cls(settings.auth_token, settings.tls_ca_file, settings.tls_cert_file,
                   settings.tls_key_file, settings.max_message_bytes)

    def credentials(self) -> grpc.ChannelCredentials | None:
        if not self.ca_file:
            return None
        read = lambda path: Path(path).read_bytes() if path else None
        return grpc.ssl_channel_credentials(read(self.ca_file), read(self.key_file), read(self.cert_file))

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Per-call metadata: the token, and the id of the request being served (if any)."""
        pairs = []
        if self.token:
            pairs.append(("authorization", f"Bearer {self.token}"))
        request_id = REQUEST_ID.get()
        if request_id:
            pairs.append(("x-request-id", request_id))
        return tuple(pairs)

    def options(self) -> list[tuple[str, object]]:
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.enable_retries", int(self.retries)),
            ("grpc.service_config", service_config(self.retries)),
            # Retries replay the request from a buffer (256 KiB by default): a 2,000-event
            # batch is larger, and would otherwise not be retried at all.
            ("grpc.per_rpc_retry_buffer_size", self.max_message_bytes),
            # Reconnect within a second or two of a peer's return instead of gRPC's default
            # backoff, which grows to two minutes.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2_000),
        ]


class _SyncMetadata(grpc.UnaryUnaryClientInterceptor):
    """Adds the token and request id to every unary call of a blocking channel."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config

    def intercept_unary_unary(self, continuation, call_details, request):
        metadata = [*(call_details.metadata or ()), *self.config.metadata()]
        return continuation(call_details._replace(metadata=metadata), request)


class _AioMetadata(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds the token and request id to every unary call of an asyncio channel."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config

    async def intercept_unary_unary(self, continuation, call_details, request):
        metadata = grpc.aio.Metadata(*(call_details.metadata or ()), *self.config.metadata())
        return await continuation(call_details._replace(metadata=metadata), request)


def open_channel(target: str, config: ClientConfig | None = None) -> grpc.Channel:
    """A blocking channel; every call carries the token and request id."""
    config = config or ClientConfig()
    credentials = config.credentials()
    if credentials is None:
        channel = grpc.insecure_channel(target, options=config.options())
    else:
        channel = grpc.secure_channel(target, credentials, options=config.options())
    return grpc.intercept_channel(channel, _SyncMetadata(config))


def open_aio_channel(target: str, config: ClientConfig | None = None) -> grpc.aio.Channel:
    """An asyncio channel; every call carries the token and request id."""
    config = config or ClientConfig()
    credentials = config.credentials()
    interceptors = [_AioMetadata(config)]
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=config.options(), interceptors=interceptors)
    return grpc.aio.secure_channel(target, credentials, options=config.options(), interceptors=interceptors)
