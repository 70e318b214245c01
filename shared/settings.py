"""One typed settings object per process, read once from SHIFTREC_* variables and CLI flags."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of ShiftRec. Environment: SHIFTREC_<FIELD> (e.g. SHIFTREC_DATABASE_URL)."""

    model_config = SettingsConfigDict(env_prefix="SHIFTREC_", extra="ignore")

    database_url: str = Field(
        "sqlite:///var/shiftrec.db",
        description="SQLAlchemy URL of the event store (SQLite file, or postgresql+psycopg://…).",
    )
    auto_migrate: bool = Field(
        True, description="Servers bring the schema to the latest migration at start-up."
    )
    bind_host: str = Field(
        "127.0.0.1", description="Address the servers listen on (0.0.0.0 in containers)."
    )
    ingestion_port: int = Field(50051, description="Port of IngestionService.")
    features_port: int = Field(50052, description="Port of FeatureService.")
    inference_port: int = Field(50053, description="Port of InferenceService.")
    max_batch_size: int = Field(
        10_000, ge=1, description="Most events (or items) one IngestEvents/UpsertItems call takes."
    )
    max_message_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest gRPC message a server accepts or sends."
    )
    max_concurrent_rpcs: int = Field(
        256, ge=1,
        description="shiftrec.v1 RPCs in flight per server (authenticated ones only, when a token "
        "is set); beyond it calls get RESOURCE_EXHAUSTED.",
    )
    max_open_streams: int = Field(
        64, ge=1,
        description="Health Watch and reflection streams (open without a token) a server keeps at "
        "once; beyond it they get RESOURCE_EXHAUSTED. Never counted in max_concurrent_rpcs.",
    )
    db_workers: int = Field(4, ge=1, description="Threads a server uses for database calls.")
    health_port: int = Field(
        0, ge=0, le=65535,
        description="Extra plaintext port serving only grpc.health.v1 (for Kubernetes probes, "
        "which cannot speak TLS); 0 = off.",
    )
    max_connection_age_seconds: float = Field(
        300.0, gt=0,
        description="Connections are closed (gracefully) after this long, so clients re-resolve "
        "DNS and spread over replicas added since.",
    )
    stop_grace_seconds: float = Field(
        10.0, ge=0, description="On SIGTERM, how long in-flight RPCs get to finish."
    )
    history_length: int = Field(
        50, ge=1, le=10_000, description="Events GetUserHistory returns when no limit is asked."
    )
    model_dir: str = Field(
        "var/models", description="Model directory: one folder per version and a LATEST file."
    )
    model_keep: int = Field(
        5, ge=1,
        description="Model versions kept in the model directory; older ones are deleted after "
        "each publish (never the one LATEST names).",
    )
    model_poll_seconds: float = Field(
        2.0, gt=0, description="How often inference looks for a newly published model."
    )
    text_cache_dir: str = Field(
        "var/cache/text", description="Training: where item text vectors are cached per catalogue."
    )
    inference_device: str = Field(
        "auto", pattern="^(auto|cpu|cuda)$", description="ONNX Runtime device: auto, cpu or cuda."
    )
    inference_threads: int = Field(1, ge=1, description="ONNX Runtime intra-op threads per call.")
    inference_workers: int = Field(
        8, ge=1, description="Requests inference works on at once (encoding, waiting on the model, "
        "ranking); with batching, up to this many share one model call."
    )
    inference_batch_max: int = Field(
        32, ge=1, le=1024, description="Most rows one ONNX Runtime call gathers from concurrent "
        "Recommend/ScoreItems requests (dynamic batching); 1 = every request runs alone."
    )
    inference_batch_threads: int = Field(
        2, ge=1, le=64, description="Model calls that run at once, each gathering its own batch "
        "(with batching on): more than one lets model work, such as a large catalogue's index "
        "search, use more than one core."
    )
    inference_batch_wait_ms: float = Field(
        0.0, ge=0, le=50, description="How long a model call waits for other requests to join "
        "its batch; 0 = it takes only those already waiting (no added latency at low load)."
    )
    features_target: str = Field("127.0.0.1:50052", description="FeatureService host:port.")
    features_timeout_seconds: float = Field(
        0.25, gt=0, description="Deadline of inference's GetUserHistory calls."
    )
    inference_history_limit: int = Field(
        200, ge=1, le=10_000,
        description="Events inference fetches per user (the model reads the last max_len; "
        "all of them are masked as seen and feed the interest profile).",
    )
    recent_window: int = Field(
        10, ge=1, le=1000, description="Default size of the recent window of interest profiles."
    )
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint; 0 = off."
    )
    auth_token: str = Field(
        "", description="When set, shiftrec.v1 RPCs need `authorization: Bearer <token>`."
    )
    tls_cert_file: str = Field("", description="PEM certificate: serve TLS (with the key file).")
    tls_key_file: str = Field("", description="PEM private key of the TLS certificate.")
    tls_ca_file: str = Field(
        "", description="PEM CA bundle: servers require client certificates signed by it; "
        "clients verify servers against it."
    )
    log_level: str = Field("INFO", description="Python logging level.")
    log_format: str = Field("json", description="json (one object per line) or text.")
