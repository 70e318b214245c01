"""The inference service's client of FeatureService, with a deadline on every call."""

import grpc

from services.inference.runtime import Step
from shared.clients import ClientConfig, open_aio_channel
from shared.errors import Unavailable
from shared.protos import timestamp_us
from shiftrec.v1 import features_pb2, features_pb2_grpc


class FeatureClient:
    def __init__(
        self, target: str, timeout_seconds: float, history_limit: int, config: ClientConfig | None = None
    ) -> None:
        self.channel = open_aio_channel(target, config)
        self.stub = features_pb2_grpc.FeatureServiceStub(self.channel)
        self.timeout = timeout_seconds
        self.history_limit = history_limit

    async def history(self, user_id: str) -> tuple[list[Step], list[str]]:
        """The user's recent events as model steps, and each event's item category.

        Raises Unavailable when the feature service does not answer within the deadline.
        """
        try:
            response = await self.stub.GetUserHistory(
                features_pb2.GetUserHistoryRequest(user_id=user_id, limit=self.history_limit),
                timeout=self.timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(f"feature service: {exc.code().name}: {exc.details()}") from exc
        steps = [
            Step(h.event.item_id, h.event.type, timestamp_us(h.event.occurred_at)) for h in response.events
        ]
        return steps, [h.category for h in response.events]

    async def close(self) -> None:
        await self.channel.close()
