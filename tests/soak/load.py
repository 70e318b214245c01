"""Open-loop mixed load: Recommend at a fixed rate and IngestEvents at a fixed event rate, at the
same time, each from its own process; the resident memory of the service processes is sampled on
the side. Every call has a deadline and the whole run stops after `seconds`."""

import asyncio
import multiprocessing
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from shared.clients import open_aio_channel
from shiftrec.v1 import common_pb2, inference_pb2, inference_pb2_grpc, ingestion_pb2, ingestion_pb2_grpc
from tests.reliability.helpers import rss_kib

STREAM_START_S = 2.0  # both streams start this long after the Recommend channel is ready


@dataclass
class LoadConfig:
    recommend_rps: float
    events_per_second: float
    batch_size: int
    seconds: float
    deadline_s: float = 1.0
    ingest_deadline_s: float = 10.0
    k: int = 10
    max_in_flight: int = 512  # beyond it a tick is counted as SHED (the client could not keep up)
    sample_seconds: float = 5.0
    seed: int = 0
    run_id: str = "load"


@dataclass
class LoadResult:
    started: float = 0.0
    load_s: float = 0.0  # how long load was offered
    elapsed_s: float = 0.0  # including the wait for the last calls
    latency_ms: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: {"Recommend": [], "IngestEvents": []})
    codes: dict[str, Counter[str]] = field(default_factory=lambda: {"Recommend": Counter(), "IngestEvents": Counter()})
    strategies: Counter[str] = field(default_factory=Counter)
    events_sent: int = 0
    events_accepted: int = 0
    events_duplicate: int = 0
    events_rejected: int = 0
    # one byte per event sent, in sending order (event serial - 1): 1 where its reply said ACCEPTED
    acknowledged: bytes = b""
    rss: dict[str, list[tuple[float, int]]] = field(default_factory=dict)  # service -> (t, KiB)

    def errors(self) -> dict[str, int]:
        return {f"{rpc}:{code}": n for rpc, codes in self.codes.items() for code, n in codes.items() if code != "OK"}

    def percentiles(self, rpc: str) -> dict[str, float]:
        values = np.array([ms for _, ms in self.latency_ms[rpc]])
        if not len(values):
            return {"count": 0, "rate_per_s": 0.0, "p50_ms": float("nan"), "p95_ms": float("nan"),
                    "p99_ms": float("nan"), "max_ms": float("nan")}
        return {"count": len(values), "rate_per_s": len(values) / max(self.load_s, 1e-9),
                "p50_ms": float(np.percentile(values, 50)), "p95_ms": float(np.percentile(values, 95)),
                "p99_ms": float(np.percentile(values, 99)), "max_ms": float(values.max())}

    def memory_growth(self, window_s: float) -> dict[str, dict[str, float]]:
        """Per service: mean RSS over the first and the last `window_s` seconds, and growth in %."""
        out = {}
        for name, samples in self.rss.items():
            if not samples:
                continue
            end = samples[-1][0]
            first = [kib for t, kib in samples if t <= window_s] or [samples[0][1]]
            last = [kib for t, kib in samples if t >= end - window_s] or [samples[-1][1]]
            a, b = float(np.mean(first)), float(np.mean(last))
            out[name] = {"first_mib": a / 1024, "last_mib": b / 1024, "growth_pct": 100.0 * (b - a) / a if a else 0.0,
                         "samples": len(samples)}
        return out


async def _sample_rss(pids: dict[str, int], result: LoadResult, stop: asyncio.Event, every: float) -> None:
    while True:
        t = time.monotonic() - result.started
        for name, pid in pids.items():
            kib = rss_kib(pid)
            if kib is not None:
                result.rss.setdefault(name, []).append((t, kib))
        try:
            await asyncio.wait_for(stop.wait(), every)
            return
        except TimeoutError:
            pass


async def _ticker(t0: float, seconds: float, rate: float, fire: Callable[[], None]) -> None:
    """Call `fire` `rate` times a second from `t0` (a time.perf_counter instant, the same clock in
    every process on Linux) for `seconds`; late ticks fire at once (open loop)."""
    if rate <= 0:
        return
    interval, n = 1.0 / rate, 0
    while True:
        due = t0 + n * interval
        if due - time.perf_counter() > 0:
            await asyncio.sleep(due - time.perf_counter())
        if time.perf_counter() - t0 >= seconds:
            return
        fire()
        n += 1


class _InFlight:
    """Calls in flight, bounded: beyond `limit` a tick is counted as SHED_BY_CLIENT."""

    def __init__(self, limit: int, codes: dict[str, Counter[str]]) -> None:
        self.limit, self.codes = limit, codes
        self.tasks: set[asyncio.Task[None]] = set()

    def launch(self, coro: Coroutine[Any, Any, None], rpc: str) -> None:
        if len(self.tasks) >= self.limit:
            coro.close()
            self.codes[rpc]["SHED_BY_CLIENT"] += 1
            return
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def drain(self, timeout: float) -> None:
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=timeout)


async def _ingest_stream(target: str, users: Sequence[str], items: Sequence[str], config: LoadConfig,
                         t0: float) -> dict[str, Any]:
    """The IngestEvents stream from `t0`; its share of a LoadResult as plain values."""
    rng = random.Random(config.seed + 1)
    latency: list[tuple[float, float]] = []
    codes: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    acknowledged = bytearray()  # per event serial - 1: 1 once its reply said ACCEPTED
    in_flight = _InFlight(config.max_in_flight, {"IngestEvents": codes})
    serial = 0

    def make_batch() -> list[common_pb2.Event]:
        nonlocal serial
        now = time.time_ns()
        batch = []
        for _ in range(config.batch_size):
            serial += 1
            # half of the events extend the histories Recommend reads, half go to other shoppers
            user = rng.choice(users) if serial % 2 else f"{config.run_id}-shopper-{rng.randrange(20_000)}"
            batch.append(common_pb2.Event(
                event_id=f"{config.run_id}-{serial}", user_id=user, item_id=rng.choice(items),
                type=rng.choice((1, 1, 1, 2, 2, 3, 4, 5)),
                occurred_at=Timestamp(seconds=now // 1_000_000_000, nanos=now % 1_000_000_000),
                platform="soak"))
        counts["sent"] += len(batch)
        acknowledged.extend(bytes(len(batch)))
        return batch

    async with open_aio_channel(target) as channel:
        ingest = ingestion_pb2_grpc.IngestionServiceStub(channel)
        await asyncio.wait_for(channel.channel_ready(), 30)

        async def ingest_batch(batch: list[common_pb2.Event]) -> None:
            start = time.perf_counter()
            try:
                reply = await ingest.IngestEvents(ingestion_pb2.IngestEventsRequest(events=batch),
                                                  timeout=config.ingest_deadline_s)
                code = "OK"
                counts.update(accepted=reply.accepted, duplicates=reply.duplicates, rejected=reply.rejected)
                for r in reply.results:
                    if r.status == ingestion_pb2.EVENT_STATUS_ACCEPTED:
                        acknowledged[event_serial(r.event_id) - 1] = 1
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            codes[code] += 1
            if code == "OK":
                latency.append((start - t0, (time.perf_counter() - start) * 1e3))

        await _ticker(t0, config.seconds, config.events_per_second / config.batch_size,
                      lambda: in_flight.launch(ingest_batch(make_batch()), "IngestEvents"))
        await in_flight.drain(config.ingest_deadline_s + 5)
    return {"latency": latency, "codes": dict(codes), "counts": dict(counts), "acknowledged": bytes(acknowledged)}


def event_serial(event_id: str) -> int:
    """The serial (1, 2, …) in an event id the stream made: `{run_id}-{serial}`."""
    return int(event_id.rsplit("-", 1)[1])


def _run_ingest_stream(target: str, users: Sequence[str], items: Sequence[str], config: LoadConfig,
                       t0: float) -> dict[str, Any]:
    return asyncio.run(_ingest_stream(target, users, items, config, t0))


def _ready() -> bool:
    return True


async def mixed_load(ingestion_target: str, inference_target: str, users: Sequence[str], items: Sequence[str],
                     config: LoadConfig, pids: dict[str, int] | None = None) -> LoadResult:
    """Run both streams for `config.seconds`, then wait (bounded) for the calls in flight.

    The event stream runs in a process of its own, as a storefront's event pipeline is not the
    client asking for recommendations: building and sending 500-event batches would otherwise
    stall the loop that times Recommend. Both start at the same instant."""
    result = LoadResult()
    rng = random.Random(config.seed)
    in_flight = _InFlight(config.max_in_flight, result.codes)
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        await loop.run_in_executor(pool, _ready)  # the worker is up before the clock starts
        async with open_aio_channel(inference_target) as infer_channel:
            infer = inference_pb2_grpc.InferenceServiceStub(infer_channel)
            await asyncio.wait_for(infer_channel.channel_ready(), 30)
            t0 = time.perf_counter() + STREAM_START_S

            async def recommend(user: str) -> None:
                start = time.perf_counter()
                try:
                    reply = await infer.Recommend(inference_pb2.RecommendRequest(user_id=user, k=config.k),
                                                  timeout=config.deadline_s)
                    code = "OK"
                    result.strategies[inference_pb2.Strategy.Name(reply.strategy)] += 1
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                result.codes["Recommend"][code] += 1
                if code == "OK":
                    result.latency_ms["Recommend"].append((start - t0, (time.perf_counter() - start) * 1e3))

            events = loop.run_in_executor(pool, _run_ingest_stream, ingestion_target, list(users), list(items),
                                          config, t0)
            await asyncio.sleep(max(t0 - time.perf_counter(), 0))
            result.started = time.monotonic()
            stop_sampling = asyncio.Event()
            sampler = asyncio.create_task(_sample_rss(pids or {}, result, stop_sampling, config.sample_seconds))
            await _ticker(t0, config.seconds, config.recommend_rps,
                          lambda: in_flight.launch(recommend(rng.choice(users)), "Recommend"))
            result.load_s = time.perf_counter() - t0
            await in_flight.drain(config.deadline_s + 5)
            stream = await events
            result.elapsed_s = time.perf_counter() - t0
            stop_sampling.set()
            await sampler
    result.latency_ms["IngestEvents"] = stream["latency"]  # (t, ms) tuples survive pickling
    result.codes["IngestEvents"].update(stream["codes"])
    counts = stream["counts"]
    result.events_sent = counts.get("sent", 0)
    result.events_accepted = counts.get("accepted", 0)
    result.events_duplicate = counts.get("duplicates", 0)
    result.events_rejected = counts.get("rejected", 0)
    result.acknowledged = stream["acknowledged"]
    return result
