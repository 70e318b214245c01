"""The inference service's client of FeatureService, with a deadline on every call."""

import logging

import grpc

from services.inference.runtime import Step
from shared import metrics
from shared.clients import ClientConfig, open_aio_channel
from shared.errors import Unavailable
from shared.protos import timestamp_us
from shiftrec.v1 import features_pb2, features_pb2_grpc

log = logging.getLogger(__name__)
AUTH_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


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

        Raises Unavailable when the feature service does not answer within the deadline, or
        refuses the call. A refusal for the token (UNAUTHENTICATED, PERMISSION_DENIED) is a
        misconfiguration, not an outage: it is logged as an error and counted
        (shiftrec_feature_auth_failures) before callers fall back like for an outage.
        """
        try:
            response = await self.stub.GetUserHistory(
                features_pb2.GetUserHistoryRequest(
                    user_id=user_id, limit=self.history_limit, view=features_pb2.HISTORY_VIEW_STEPS
                ),
                timeout=self.timeout,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in AUTH_CODES:
                metrics.FEATURE_AUTH_FAILURES.labels(exc.code().name).inc()
                log.error("feature service refused inference's credentials; check SHIFTREC_AUTH_TOKEN",
                          extra={"code": exc.code().name, "reason": exc.details()})
            raise Unavailable(f"feature service: {exc.code().name}: {exc.details()}") from exc
        if response.events and not response.steps.item_ids:
            # a feature server older than HISTORY_VIEW_STEPS answers with the full view
            return (
                [Step(h.event.item_id, h.event.type, timestamp_us(h.event.occurred_at)) for h in response.events],
                [h.category for h in response.events],
            )
        columns = response.steps
        n = len(columns.item_ids)
        if not len(columns.types) == len(columns.occurred_at_us) == len(columns.categories) == n:
            raise Unavailable("feature service: malformed history (columns of different lengths)")
        steps = list(map(Step._make, zip(columns.item_ids, columns.types, columns.occurred_at_us, strict=True)))
        return steps, list(columns.categories)

    async def close(self) -> None:
        await self.channel.close()
