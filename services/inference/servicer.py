"""InferenceService over gRPC: validate, fetch history from FeatureService, run the core off the
event loop, domain -> proto."""

import logging
from concurrent.futures import Executor
from typing import cast

import grpc

from services.inference import ranking
from services.inference.features_client import FeatureClient
from services.inference.ranking import Inference, Strategy
from shared import metrics
from shared.errors import Unavailable
from shared.grpc_server import run_blocking
from shiftrec.v1 import inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)

PROVIDER_METADATA = "shiftrec-execution-provider"


def _interests(pairs: list[tuple[str, float]]) -> list[inference_pb2.CategoryInterest]:
    return [inference_pb2.CategoryInterest(category=c, weight=w) for c, w in pairs]


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, inference: Inference, features: FeatureClient, executor: Executor) -> None:
        self.inference = inference
        self.features = features
        self.executor = executor

    def _tag(self, context: grpc.aio.ServicerContext) -> None:
        context.set_trailing_metadata(((PROVIDER_METADATA, self.inference.registry.current().provider),))

    async def Recommend(
        self, request: inference_pb2.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.RecommendResponse:
        exclude = list(request.exclude_item_ids)
        category = request.category if request.HasField("category") else None
        ranking.check_recommend(request.user_id, request.k, exclude)
        self.inference.registry.current()  # FAILED_PRECONDITION before any remote call
        try:
            history, _ = await self.features.history(request.user_id)
        except Unavailable as exc:
            log.warning("feature service unavailable: serving popular items", extra={"reason": str(exc)})
            result = await run_blocking(
                self.executor, self.inference.popular, request.k, category, exclude, (),
                Strategy.FALLBACK_FEATURES_UNAVAILABLE,
            )
        else:
            result = await run_blocking(
                self.executor, self.inference.recommend, history, request.k, category, exclude,
                request.include_seen,
            )
        self._tag(context)
        metrics.RECOMMEND_STRATEGY.labels(result.strategy.name.lower()).inc()
        return inference_pb2.RecommendResponse(
            items=[inference_pb2.ScoredItem(item_id=i, score=s) for i, s in result.items],
            model_version=result.model_version,
            strategy=cast(inference_pb2.Strategy, int(result.strategy)),
        )

    async def ScoreItems(
        self, request: inference_pb2.ScoreItemsRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ScoreItemsResponse:
        item_ids = list(request.item_ids)
        ranking.check_score(request.user_id, item_ids)
        self.inference.registry.current()
        history, _ = await self.features.history(request.user_id)
        result = await run_blocking(self.executor, self.inference.score_items, history, item_ids)
        self._tag(context)
        return inference_pb2.ScoreItemsResponse(
            items=[inference_pb2.ItemProbability(item_id=i, probability=p) for i, p in result.items],
            unknown_item_ids=result.unknown,
            model_version=result.model_version,
        )

    async def GetInterestProfile(
        self, request: inference_pb2.GetInterestProfileRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.GetInterestProfileResponse:
        ranking.check_profile(request.user_id, request.recent_window)
        self.inference.registry.current()
        history, categories = await self.features.history(request.user_id)
        result = await run_blocking(
            self.executor, self.inference.profile, history, categories, request.recent_window
        )
        self._tag(context)
        interest = result.interest
        return inference_pb2.GetInterestProfileResponse(
            user_id=request.user_id,
            long_term=_interests(interest.long_term),
            recent=_interests(interest.recent),
            drift_score=interest.drift_score,
            rising=_interests(interest.rising),
            fading=_interests(interest.fading),
            model_shift=result.model_shift,
            model_version=result.model_version,
            shift_probability=result.shift_probability,
            next_categories=_interests(result.next_categories),
            shift_window=result.shift_window,
        )
