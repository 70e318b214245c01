"""Client channels for ShiftRec's services, with gRPC's own retry policy for UNAVAILABLE.

Retrying IngestEvents is safe because event ids are idempotency keys: a batch whose
acknowledgement was lost is stored once and reported as duplicates the second time.
"""

import json

import grpc

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024

RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": "shiftrec.v1.IngestionService"},
                    {"service": "shiftrec.v1.FeatureService"},
                    {"service": "shiftrec.v1.InferenceService"},
                ],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, object]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", RETRY_SERVICE_CONFIG),
    ]


def insecure_channel(target: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> grpc.Channel:
    """A blocking channel with the retry policy."""
    return grpc.insecure_channel(target, options=channel_options(max_message_bytes))


def aio_insecure_channel(
    target: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> grpc.aio.Channel:
    """An asyncio channel with the retry policy."""
    return grpc.aio.insecure_channel(target, options=channel_options(max_message_bytes))
