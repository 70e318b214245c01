"""Prometheus metrics of every ShiftRec process, defined once, served over HTTP on request."""

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RPC_REQUESTS = Counter(
    "shiftrec_rpc_requests", "RPCs answered, by method and status code", ["method", "code"]
)
RPC_LATENCY = Histogram(
    "shiftrec_rpc_latency_seconds",
    "Server-side RPC latency, by method",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
EVENTS = Counter("shiftrec_events", "Events by ingestion outcome", ["outcome"])
ITEMS_UPSERTED = Counter("shiftrec_items_upserted", "Catalogue items written")
EVENTS_ERASED = Counter("shiftrec_events_erased", "Events erased by DeleteUser")
FEATURE_FRESHNESS = Histogram(
    "shiftrec_feature_history_age_seconds",
    "Age of the newest event of a served history at read time",
    buckets=(0.01, 0.1, 1, 10, 60, 600, 3600, 86_400, 604_800, float("inf")),
)
MODEL_INFO = Gauge(
    "shiftrec_model_info", "The model being served (value 1)", ["version", "execution_provider"]
)
MODEL_LOADS = Counter("shiftrec_model_loads", "Model packages loaded and swapped in")
MODEL_LOAD_FAILURES = Counter("shiftrec_model_load_failures", "Model packages refused")
FEATURE_AUTH_FAILURES = Counter(
    "shiftrec_feature_auth_failures",
    "Calls of inference to FeatureService refused for authentication or permission, by code",
    ["code"],
)
INFERENCE_BATCH_ROWS = Histogram(
    "shiftrec_inference_batch_rows",
    "Rows per ONNX Runtime call of the dynamic batcher (concurrent Recommend/ScoreItems gathered)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
RECOMMEND_STRATEGY = Counter(
    "shiftrec_recommend_strategy", "Recommend responses by strategy", ["strategy"]
)


def serve_metrics(port: int, host: str) -> None:
    """Expose /metrics on `port` (0 = do not expose)."""
    if port:
        start_http_server(port, addr=host)
