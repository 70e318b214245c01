"""Property-based fuzzing of every RPC (hypothesis): arbitrary unicode and control characters,
SQL fragments, huge and empty strings, out-of-range enums, extreme timestamps and numbers,
oversized batches and messages, and raw bytes at the wire level.

Every answer must be OK or the documented client error, exactly as a reference reading of the
README's rules predicts (never INTERNAL, UNKNOWN or a crash); the store must change by exactly
what was acknowledged (a mirror of every stored row is kept and compared after each call), so
rejected input leaves the events table unchanged (count and checksum).

FUZZ_SCALE=0.1 runs a tenth of the examples (for quick local runs)."""

import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, make_url, text

from services.features.server import build_server as build_features
from services.inference.server import build_server as build_inference
from services.ingestion.server import build_server as build_ingestion
from shared import model_package as pkg
from shared.clients import open_channel
from shared.settings import Settings
from shared.store import EventStore, ItemRecord, create_store_engine
from shiftrec.v1 import (
    common_pb2,
    features_pb2,
    features_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    ingestion_pb2,
    ingestion_pb2_grpc,
)
from tests.conftest import BackgroundLoop
from tests.reliability.helpers import LEDGER, events_fingerprint, publish_copy, rows_digest

SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
MAX_BATCH = 200
MAX_MESSAGE = 256 * 1024
EARLIEST_S = 631_152_000
NOW_S = int(time.time())
CLIENT_ERRORS = {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "UNAUTHENTICATED",
                 "OUT_OF_RANGE", "NOT_FOUND"}


def examples(n: int) -> settings:
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


# -- the reference rules (README "Validation of one event", protos) ---------------------------------
def id_ok(value: str, required: bool = True) -> bool:
    if not value:
        return not required
    return len(value) <= 128 and "\x00" not in value


def event_ok(e: common_pb2.Event, now_us: int) -> bool:
    if not (id_ok(e.event_id) and id_ok(e.user_id) and id_ok(e.item_id)):
        return False
    if e.type not in set(common_pb2.EventType.values()) - {common_pb2.EVENT_TYPE_UNSPECIFIED} \
            or not e.HasField("occurred_at"):
        return False
    if not 0 <= e.occurred_at.nanos <= 999_999_999:
        return False
    us = e.occurred_at.seconds * 1_000_000 + e.occurred_at.nanos // 1_000
    if us < EARLIEST_S * 1_000_000 or us > now_us + 5 * 60 * 1_000_000:
        return False
    if not id_ok(e.platform, required=False):
        return False
    return not (e.HasField("value") and not math.isfinite(e.value))


def item_ok(i: common_pb2.Item) -> bool:
    return (id_ok(i.item_id) and len(i.title) <= 2000 and "\x00" not in i.title and id_ok(i.category, False)
            and id_ok(i.brand, False) and math.isfinite(i.price) and i.price >= 0 and len(i.tags) <= 64
            and all(id_ok(t) for t in i.tags))


def event_row(e: common_pb2.Event) -> tuple[Any, ...]:
    us = e.occurred_at.seconds * 1_000_000 + e.occurred_at.nanos // 1_000
    return (e.event_id, e.user_id, e.item_id, e.type, us, e.platform, e.value if e.HasField("value") else None)


# -- strategies ------------------------------------------------------------------------------------
NASTY = ["", " ", "\x00", "a\x00b", "\x01\x02\x7f", "\r\n\t", "'", "''", '"', "\\", "%", "_", "%_%",
         "'; DROP TABLE events; --", "\" OR 1=1 --", "Robert'); DELETE FROM items;--", "1; SELECT pg_sleep(5)",
         "NULL", "null", "None", "\u202eevil", "\ufeff", "\u200b", "🙂", "👩‍👩‍👧‍👦", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "İı", "ß",
         "é" * 128, "é" * 129, "x" * 128, "x" * 129, "漢字" * 64, "\U0010ffff", "$(reboot)", "{{7*7}}",
         "<script>alert(1)</script>", "../../etc/passwd"]
POOL = [f"fz-{n}" for n in range(12)] + ["fz-'; DROP TABLE events; --", "fz-🙂"]
texts = st.one_of(st.sampled_from(NASTY), st.text(max_size=24), st.text(min_size=120, max_size=140),
                  st.sampled_from(["h" * 5_000]))
ids = st.one_of(st.sampled_from(POOL), texts)
seconds = st.one_of(st.integers(EARLIEST_S + 86_400, NOW_S - 86_400),
                    st.sampled_from([0, -1, -62_135_596_800, -(2**63), 2**63 - 1, EARLIEST_S - 1, EARLIEST_S,
                                     NOW_S + 3_600, 253_402_300_800]))
nanos = st.one_of(st.integers(0, 999_999_999), st.sampled_from([-1, 1_000_000_000, -(2**31), 2**31 - 1]))
enums = st.one_of(st.integers(0, 7), st.sampled_from([-1, 99, -(2**31), 2**31 - 1]))
doubles = st.one_of(st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, -1e308, 5e-324]))
ints32 = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([-1, 0, 1, 50, 1000, 1001, 10_000, 10_001]))


@st.composite
def events(draw: st.DrawFn) -> common_pb2.Event:
    e = common_pb2.Event(event_id=draw(ids), user_id=draw(st.one_of(st.sampled_from(POOL[:4]), ids)),
                         item_id=draw(ids), type=draw(enums), platform=draw(texts))
    if draw(st.integers(0, 9)):  # occurred_at missing one time in ten
        e.occurred_at.CopyFrom(Timestamp(seconds=draw(seconds), nanos=draw(nanos)))
    if draw(st.booleans()):
        e.value = draw(doubles)
    return e


@st.composite
def event_batches(draw: st.DrawFn) -> list[common_pb2.Event]:
    kind = draw(st.integers(0, 19))
    if kind == 0:  # over the batch limit (small events: the count is what is wrong)
        return [common_pb2.Event(event_id=f"big-{n}", user_id="u", item_id="i", type=1,
                                 occurred_at=Timestamp(seconds=NOW_S - 60))
                for n in range(draw(st.integers(MAX_BATCH + 1, MAX_BATCH + 40)))]
    if kind == 1:  # over the message limit
        big = draw(events())
        big.platform = "p" * 70_000
        return [big] * 4
    return draw(st.lists(events(), min_size=0, max_size=12))


@st.composite
def items(draw: st.DrawFn) -> common_pb2.Item:
    tags = draw(st.one_of(st.lists(texts, max_size=3), st.just(["t"] * 65)))
    title = draw(st.one_of(texts, st.sampled_from(["T" * 2000, "T" * 2001])))
    return common_pb2.Item(item_id=draw(ids), title=title, category=draw(texts), tags=tags, brand=draw(texts),
                           price=draw(doubles))


# -- the stack: in-process servers over one store, and a mirror of its rows ---------------------------
@dataclass
class Mirror:
    """What the store must hold: every event and item row, by id."""

    store: EventStore
    events: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    items: dict[str, ItemRecord] = field(default_factory=dict)
    erased: dict[str, int] = field(default_factory=dict)  # user -> when DeleteUser erased them (µs)

    def reload(self) -> None:
        query = "SELECT event_id, user_id, item_id, event_type, occurred_at_us, platform, value FROM events"
        with self.store.engine.connect() as conn:
            self.events = {r[0]: tuple(r) for r in conn.execute(text(query))}
        self.items = {i.item_id: i for i in self.store.all_items()}

    def check_events(self, touched: list[str]) -> None:
        touched = [i for i in touched if "\x00" not in i]  # never storable; PostgreSQL cannot even bind it
        count, digest = events_fingerprint(self.store, touched)
        expected = [self.events[i] for i in dict.fromkeys(touched) if i in self.events]
        if (count, digest) != (len(expected), rows_digest(expected)):
            with self.store.engine.connect() as conn:
                stored = {r[0]: tuple(r) for r in conn.execute(text(
                    "SELECT event_id, user_id, item_id, event_type, occurred_at_us, platform, value FROM events"))}
            diff = [(stored.get(i), self.events.get(i)) for i in dict.fromkeys(touched)
                    if stored.get(i) != self.events.get(i)]
            raise AssertionError(f"stored rows differ from the acknowledged ones (stored, expected): {diff[:3]!r}")
        assert self.store.count_events() == len(self.events), "the events table changed by more than was acknowledged"

    def user_events(self, user: str) -> int:
        return sum(1 for row in self.events.values() if row[1] == user)


@dataclass
class Stack:
    loop: BackgroundLoop
    servers: list[Any]
    channels: list[grpc.Channel]
    ingest: ingestion_pb2_grpc.IngestionServiceStub
    features: features_pb2_grpc.FeatureServiceStub
    inference: inference_pb2_grpc.InferenceServiceStub
    mirror: Mirror
    targets: dict[str, str]
    vocab: dict[str, str]  # item -> category, from the model

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        for server in reversed(self.servers):
            self.loop.run(server.stop)
        self.loop.close()
        self.mirror.store.engine.dispose()


def start_stack(database_url: str, model_dir: Path | None) -> Stack:
    loop = BackgroundLoop()
    servers: list[Any] = []

    def serve(build):
        server = loop.run(build)
        loop.run(server.start)
        servers.append(server)
        return server

    base = {"database_url": database_url, "max_batch_size": MAX_BATCH, "max_message_bytes": MAX_MESSAGE}
    ingestion = serve(lambda: build_ingestion(Settings(**base), port=0))
    targets = {"ingestion": f"127.0.0.1:{ingestion.port}"}
    vocab: dict[str, str] = {}
    if model_dir is not None:
        features = serve(lambda: build_features(Settings(**base), port=0))
        inference = serve(lambda: build_inference(Settings(**base, model_dir=str(model_dir), features_timeout_seconds=5.0,
                                                           features_target=f"127.0.0.1:{features.port}"), port=0))
        targets |= {"features": f"127.0.0.1:{features.port}", "inference": f"127.0.0.1:{inference.port}"}
        manifest = pkg.load_manifest(pkg.resolve_package(model_dir))
        vocab = dict(zip(manifest.item_vocab, manifest.item_categories, strict=True))
    channels = {name: open_channel(target) for name, target in targets.items()}
    mirror = Mirror(EventStore(create_store_engine(database_url)))
    mirror.reload()
    return Stack(loop, servers, list(channels.values()), ingestion_pb2_grpc.IngestionServiceStub(channels["ingestion"]),
                 features_pb2_grpc.FeatureServiceStub(channels["features"]) if "features" in channels else None,
                 inference_pb2_grpc.InferenceServiceStub(channels["inference"]) if "inference" in channels else None,
                 mirror, targets, vocab)


@pytest.fixture(scope="module")
def stack(tiny_world, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("fuzz")
    # The store on tmpfs when there is one: fsync per commit is not what this suite measures.
    shm = Path(tempfile.mkdtemp(prefix="shiftrec-fuzz-", dir="/dev/shm")) if Path("/dev/shm").is_dir() else root
    url = tiny_world.sqlite_copy(shm)
    publish_copy(tiny_world.package, root / "models", "v1")
    s = start_stack(url, root / "models")
    yield s
    final_check(s)
    s.close()
    if shm != root:
        shutil.rmtree(shm, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_stack(postgres_server_url: str) -> Iterator[Stack]:
    name = f"shiftrec_fz_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
        conn.execute(text(f'ALTER DATABASE "{name}" SET synchronous_commit = off'))  # speed, not durability, here
    url = make_url(postgres_server_url).set(database=name).render_as_string(hide_password=False)
    s = start_stack(url, None)
    yield s
    final_check(s)
    s.close()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def final_check(s: Stack) -> None:
    """After all examples: the whole events table equals the mirror, row for row."""
    assert events_fingerprint(s.mirror.store) == (len(s.mirror.events), rows_digest(s.mirror.events.values()))


def summary(store: EventStore) -> tuple[int, int, int]:
    """A one-query checksum of the events table: row count, sum of seq, sum of times mod a prime."""
    with store.engine.connect() as conn:
        row = conn.execute(text("SELECT count(*), coalesce(sum(seq), 0), coalesce(sum(occurred_at_us % 1000003), 0) "
                                "FROM events")).one()
    return int(row[0]), int(row[1]), int(row[2])


def call(rpc: str, fn, request) -> tuple[str, Any]:
    """(status code name, response or None); counts the request."""
    try:
        response = fn(request, timeout=30)
        code = "OK"
    except grpc.RpcError as exc:
        response, code = None, exc.code().name
    LEDGER.count_fuzz(rpc, code)
    assert code == "OK" or code in CLIENT_ERRORS, f"{rpc} answered {code}"
    return code, response


# -- ingestion ----------------------------------------------------------------------------------------
def fuzz_ingest_events(s: Stack, batch: list[common_pb2.Event], rpc: str) -> None:
    request = ingestion_pb2.IngestEventsRequest(events=batch)
    now_us = time.time_ns() // 1_000
    code, response = call(rpc, s.ingest.IngestEvents, request)
    if request.ByteSize() > MAX_MESSAGE:
        expected = "RESOURCE_EXHAUSTED"
    elif not 1 <= len(batch) <= MAX_BATCH:
        expected = "INVALID_ARGUMENT"
    else:
        expected = "OK"
    assert code == expected
    if code == "OK":
        assert [r.event_id for r in response.results] == [e.event_id for e in batch]
        seen_in_batch: set[str] = set()
        for e, r in zip(batch, response.results, strict=True):
            if not event_ok(e, now_us):
                assert r.status == ingestion_pb2.EVENT_STATUS_REJECTED and r.reason, (e, r)
                continue
            occurred_us = e.occurred_at.seconds * 1_000_000 + e.occurred_at.nanos // 1_000
            if occurred_us <= s.mirror.erased.get(e.user_id, -1):
                assert r.status == ingestion_pb2.EVENT_STATUS_REJECTED and r.reason.startswith("user_id: erased")
                continue
            stored = e.event_id in s.mirror.events or e.event_id in seen_in_batch
            assert r.status == (ingestion_pb2.EVENT_STATUS_DUPLICATE if stored else ingestion_pb2.EVENT_STATUS_ACCEPTED)
            if not stored:
                s.mirror.events[e.event_id] = event_row(e)
            seen_in_batch.add(e.event_id)
        counts = [sum(r.status == st_ for r in response.results) for st_ in (1, 2, 3)]
        assert counts == [response.accepted, response.duplicates, response.rejected]
    s.mirror.check_events([e.event_id for e in batch[:50]])


@examples(1_300)
@given(batch=event_batches())
def test_fuzz_ingest_events_sqlite(stack: Stack, batch: list[common_pb2.Event]) -> None:
    fuzz_ingest_events(stack, batch, "IngestEvents[sqlite]")


@examples(400)
@given(batch=event_batches())
def test_fuzz_ingest_events_postgres(pg_stack: Stack, batch: list[common_pb2.Event]) -> None:
    fuzz_ingest_events(pg_stack, batch, "IngestEvents[postgresql]")


@examples(500)
@given(batch=st.one_of(
    st.lists(items(), max_size=6),
    st.integers(MAX_BATCH + 1, MAX_BATCH + 30).map(lambda n: [common_pb2.Item(item_id=f"b{j}") for j in range(n)]),
    st.just([common_pb2.Item(item_id="big", title="T" * 270_000)]),  # over the message limit
))
def test_fuzz_upsert_items(stack: Stack, batch: list[common_pb2.Item]) -> None:
    request = ingestion_pb2.UpsertItemsRequest(items=batch)
    code, response = call("UpsertItems", stack.ingest.UpsertItems, request)
    if request.ByteSize() > MAX_MESSAGE:
        expected = "RESOURCE_EXHAUSTED"
    elif not 1 <= len(batch) <= MAX_BATCH or not all(item_ok(i) for i in batch):
        expected = "INVALID_ARGUMENT"
    else:
        expected = "OK"
    assert code == expected
    if code == "OK":
        latest = {i.item_id: i for i in batch}
        assert response.upserted == len(latest)
        for i in latest.values():
            stack.mirror.items[i.item_id] = ItemRecord(i.item_id, i.title, i.category, tuple(i.tags), i.brand, i.price)
    touched = list(dict.fromkeys(i.item_id for i in batch if id_ok(i.item_id)))[:50]
    found = stack.mirror.store.get_items(touched)
    assert found == {i: stack.mirror.items[i] for i in touched if i in stack.mirror.items}
    assert stack.mirror.store.count_items() == len(stack.mirror.items)
    assert stack.mirror.store.count_events() == len(stack.mirror.events)


@examples(550)
@given(user=st.one_of(st.sampled_from(POOL[:4]), ids))
def test_fuzz_delete_user(stack: Stack, user: str) -> None:
    before_us = time.time_ns() // 1_000
    code, response = call("DeleteUser", stack.ingest.DeleteUser, ingestion_pb2.DeleteUserRequest(user_id=user))
    assert code == ("OK" if id_ok(user) else "INVALID_ARGUMENT")
    if code == "OK":
        # the server stamps the erasure between these two instants; older events stay out
        stack.mirror.erased[user] = before_us
        assert response.deleted_events == stack.mirror.user_events(user)
        stack.mirror.events = {k: v for k, v in stack.mirror.events.items() if v[1] != user}
    assert stack.mirror.store.count_events() == len(stack.mirror.events)


# -- features -----------------------------------------------------------------------------------------
users = st.one_of(st.sampled_from(POOL[:4]), ids)


@examples(1_000)
@given(user=users, limit=ints32)
def test_fuzz_get_user_history(stack: Stack, user: str, limit: int) -> None:
    code, response = call("GetUserHistory", stack.features.GetUserHistory,
                          features_pb2.GetUserHistoryRequest(user_id=user, limit=limit))
    assert code == ("OK" if id_ok(user) and 0 <= limit <= 10_000 else "INVALID_ARGUMENT")
    if code == "OK":
        assert len(response.events) == min(limit or 50, stack.mirror.user_events(user))
        assert all(h.event.user_id == user for h in response.events)
        times = [(h.event.occurred_at.seconds, h.event.occurred_at.nanos) for h in response.events]
        assert times == sorted(times)


@examples(1_000)
@given(item_ids=st.one_of(st.lists(ids, max_size=6), st.just(["x"] * 10_001)))
def test_fuzz_get_items(stack: Stack, item_ids: list[str]) -> None:
    request = features_pb2.GetItemsRequest(item_ids=item_ids)
    code, response = call("GetItems", stack.features.GetItems, request)
    if request.ByteSize() > MAX_MESSAGE:
        expected = "RESOURCE_EXHAUSTED"
    elif not 1 <= len(item_ids) <= 10_000 or not all(id_ok(i) for i in item_ids):
        expected = "INVALID_ARGUMENT"
    else:
        expected = "OK"
    assert code == expected
    if code == "OK":
        assert [i.item_id for i in response.items] == [i for i in item_ids if i in stack.mirror.items]
        assert list(response.missing_item_ids) == [i for i in item_ids if i not in stack.mirror.items]


# -- inference ----------------------------------------------------------------------------------------
VOCAB_SAMPLE = [f"{c}-{j:03d}" for c in ("makeup", "skincare", "fragrance", "nails") for j in range(0, 12, 3)]
item_refs = st.one_of(st.sampled_from(VOCAB_SAMPLE), ids)
categories = st.one_of(st.none(), st.sampled_from(["makeup", "skincare", "bath", "mens"]), texts)


@examples(1_300)
@given(user=users, k=ints32, category=categories, exclude=st.one_of(st.lists(item_refs, max_size=4),
                                                                      st.just(["x"] * 1_001)),
       include_seen=st.booleans())
def test_fuzz_recommend(stack: Stack, user: str, k: int, category: str | None, exclude: list[str],
                        include_seen: bool) -> None:
    request = inference_pb2.RecommendRequest(user_id=user, k=k, exclude_item_ids=exclude, include_seen=include_seen)
    if category is not None:
        request.category = category
    code, response = call("Recommend", stack.inference.Recommend, request)
    assert code == ("OK" if id_ok(user) and 1 <= k <= 1000 and len(exclude) <= 1000 else "INVALID_ARGUMENT")
    if code == "OK":
        assert response.strategy in (inference_pb2.STRATEGY_MODEL, inference_pb2.STRATEGY_RECENT_POPULAR)
        assert response.model_version == "v1"
        got = [i.item_id for i in response.items]
        assert len(got) <= k and len(set(got)) == len(got) and not set(got) & set(exclude)
        assert all(i in stack.vocab for i in got)
        if category is not None:
            assert all(stack.vocab[i] == category for i in got)
        scores = [i.score for i in response.items]
        assert all(math.isfinite(x) for x in scores) and scores == sorted(scores, reverse=True)


@examples(1_000)
@given(user=users, item_ids=st.one_of(st.lists(item_refs, max_size=6), st.just(["x"] * 1_001)))
def test_fuzz_score_items(stack: Stack, user: str, item_ids: list[str]) -> None:
    code, response = call("ScoreItems", stack.inference.ScoreItems,
                          inference_pb2.ScoreItemsRequest(user_id=user, item_ids=item_ids))
    valid = id_ok(user) and 1 <= len(item_ids) <= 1000 and all(id_ok(i) for i in item_ids)
    assert code == ("OK" if valid else "INVALID_ARGUMENT")
    if code == "OK":
        assert [i.item_id for i in response.items] == [i for i in item_ids if i in stack.vocab]
        assert list(response.unknown_item_ids) == [i for i in item_ids if i not in stack.vocab]
        assert all(0.0 <= i.probability <= 1.0 for i in response.items)


@examples(1_000)
@given(user=users, window=ints32)
def test_fuzz_get_interest_profile(stack: Stack, user: str, window: int) -> None:
    code, response = call("GetInterestProfile", stack.inference.GetInterestProfile,
                          inference_pb2.GetInterestProfileRequest(user_id=user, recent_window=window))
    assert code == ("OK" if id_ok(user) and 0 <= window <= 1000 else "INVALID_ARGUMENT")
    if code == "OK":
        for part in (response.long_term, response.recent):
            total = sum(c.weight for c in part)
            assert all(math.isfinite(c.weight) and c.weight >= 0 for c in part)
            assert not part or abs(total - 1.0) < 1e-4
        assert 0.0 <= response.drift_score <= 1.0 and 0.0 <= response.model_shift <= 1.0


# -- the wire: raw bytes ------------------------------------------------------------------------------
METHODS = {
    "/shiftrec.v1.IngestionService/IngestEvents": ("ingestion", ingestion_pb2.IngestEventsRequest(
        events=[common_pb2.Event(event_id="w-1", user_id="w-u", item_id="makeup-001", type=1,
                                 occurred_at=Timestamp(seconds=NOW_S - 60))])),
    "/shiftrec.v1.IngestionService/UpsertItems": ("ingestion", ingestion_pb2.UpsertItemsRequest(
        items=[common_pb2.Item(item_id="w-item", title="t", tags=["a"], price=1.5)])),
    "/shiftrec.v1.IngestionService/DeleteUser": ("ingestion", ingestion_pb2.DeleteUserRequest(user_id="w-nobody")),
    "/shiftrec.v1.FeatureService/GetUserHistory": ("features", features_pb2.GetUserHistoryRequest(user_id="u", limit=5)),
    "/shiftrec.v1.FeatureService/GetItems": ("features", features_pb2.GetItemsRequest(item_ids=["makeup-001"])),
    "/shiftrec.v1.InferenceService/Recommend": ("inference", inference_pb2.RecommendRequest(user_id="u", k=3)),
    "/shiftrec.v1.InferenceService/ScoreItems": ("inference", inference_pb2.ScoreItemsRequest(
        user_id="u", item_ids=["makeup-001"])),
    "/shiftrec.v1.InferenceService/GetInterestProfile": ("inference", inference_pb2.GetInterestProfileRequest(
        user_id="u", recent_window=3)),
}


@st.composite
def wire_payloads(draw: st.DrawFn) -> tuple[str, bytes]:
    method = draw(st.sampled_from(sorted(METHODS)))
    valid = METHODS[method][1].SerializeToString()
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return method, draw(st.binary(max_size=300))
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):  # flip, insert or delete a few bytes of a valid request
        op, pos, byte = draw(st.integers(0, 2)), draw(st.integers(0, max(len(data) - 1, 0))), draw(st.integers(0, 255))
        if op == 0 and data:
            data[pos] = byte
        elif op == 1:
            data.insert(pos, byte)
        elif data:
            del data[pos]
    return method, bytes(data)


def decodable(method: str, payload: bytes) -> bool:
    try:
        type(METHODS[method][1]).FromString(payload)
        return True
    except DecodeError:
        return False


@examples(2_300)
@given(case=wire_payloads())
def test_fuzz_raw_bytes_on_the_wire(stack: Stack, case: tuple[str, bytes]) -> None:
    method, payload = case
    service = METHODS[method][0]
    channel = stack.channels[list(stack.targets).index(service)]
    before = summary(stack.mirror.store)
    rpc = "raw:" + method.rsplit("/", 1)[1]
    try:
        response = channel.unary_unary(method, request_serializer=None, response_deserializer=None)(payload, timeout=30)
        code, details = "OK", ""
    except grpc.RpcError as exc:
        response, code, details = None, exc.code().name, exc.details() or ""
    parsed = decodable(method, payload)
    LEDGER.count_fuzz(rpc, code if parsed else f"{code}(undecodable)")
    if parsed:
        assert code == "OK" or code in CLIENT_ERRORS, f"{method} answered {code}: {details}"
    else:
        assert code == "INVALID_ARGUMENT" and details.startswith("request: malformed request"), \
            f"{method}: {code} {details}"
    after = summary(stack.mirror.store)
    if code == "OK" and method.endswith(("IngestEvents", "DeleteUser")):
        reply = (ingestion_pb2.IngestEventsResponse if method.endswith("IngestEvents")
                 else ingestion_pb2.DeleteUserResponse).FromString(response)
        delta = reply.accepted if method.endswith("IngestEvents") else -reply.deleted_events
        assert after[0] == before[0] + delta
        if delta:
            stack.mirror.reload()
        else:
            assert after == before
    else:
        assert after == before, "a refused raw request changed the events table"
    if code == "OK" and method.endswith("UpsertItems"):
        stack.mirror.items = {i.item_id: i for i in stack.mirror.store.all_items()}


def test_undecodable_request_is_invalid_argument(stack: Stack) -> None:
    codes = {}
    for method, (service, _) in METHODS.items():
        channel = stack.channels[list(stack.targets).index(service)]
        for payload in (b"\xff\xff\xff", b"\x0a\x04\x0a\x02\xc3\x28"):  # corrupt wire format; bad UTF-8
            try:
                channel.unary_unary(method, request_serializer=None, response_deserializer=None)(payload, timeout=30)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
            LEDGER.count_fuzz("raw:" + method.rsplit("/", 1)[1], f"{code}(undecodable)")
            codes[(method, payload)] = code
    LEDGER.record("undecodable_requests", answered={f"{m.rsplit('/', 1)[1]} {p!r}": c for (m, p), c in codes.items()})
    assert set(codes.values()) == {"INVALID_ARGUMENT"}
