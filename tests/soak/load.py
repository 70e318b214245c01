"""Open-loop mixed load: Recommend at a fixed rate and IngestEvents at a fixed event rate, at the
same time, from one asyncio loop; the resident memory of the service processes is sampled on
the side. Every call has a deadline and the whole run stops after `seconds`."""

import asyncio
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from shared.clients import open_aio_channel
from shiftrec.v1 import common_pb2, inference_pb2, inference_pb2_grpc, ingestion_pb2, ingestion_pb2_grpc
from tests.reliability.helpers import rss_kib


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


async def mixed_load(ingestion_target: str, inference_target: str, users: Sequence[str], items: Sequence[str],
                     config: LoadConfig, pids: dict[str, int] | None = None) -> LoadResult:
    """Run both streams for `config.seconds`, then wait (bounded) for the calls in flight."""
    result = LoadResult()
    rng = random.Random(config.seed)
    in_flight: set[asyncio.Task[None]] = set()
    async with open_aio_channel(ingestion_target) as ingest_channel, open_aio_channel(inference_target) as infer_channel:
        ingest = ingestion_pb2_grpc.IngestionServiceStub(ingest_channel)
        infer = inference_pb2_grpc.InferenceServiceStub(infer_channel)
        # connect both channels before the clock starts
        await asyncio.wait_for(ingest_channel.channel_ready(), 30)
        await asyncio.wait_for(infer_channel.channel_ready(), 30)

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

        async def ingest_batch(batch: list[common_pb2.Event]) -> None:
            start = time.perf_counter()
            try:
                reply = await ingest.IngestEvents(ingestion_pb2.IngestEventsRequest(events=batch),
                                                  timeout=config.ingest_deadline_s)
                code = "OK"
                result.events_accepted += reply.accepted
                result.events_duplicate += reply.duplicates
                result.events_rejected += reply.rejected
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            result.codes["IngestEvents"][code] += 1
            if code == "OK":
                result.latency_ms["IngestEvents"].append((start - t0, (time.perf_counter() - start) * 1e3))

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
            result.events_sent += len(batch)
            return batch

        def launch(coro, rpc: str) -> None:
            if len(in_flight) >= config.max_in_flight:
                coro.close()
                result.codes[rpc]["SHED_BY_CLIENT"] += 1
                return
            task = asyncio.create_task(coro)
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)

        async def ticker(rate: float, fire) -> None:
            if rate <= 0:
                return
            interval, n = 1.0 / rate, 0
            while True:
                due = t0 + n * interval
                if due - time.perf_counter() > 0:
                    await asyncio.sleep(due - time.perf_counter())
                if time.perf_counter() - t0 >= config.seconds:
                    return
                fire()
                n += 1

        stop_sampling = asyncio.Event()
        t0 = time.perf_counter()
        result.started = time.monotonic()
        sampler = asyncio.create_task(_sample_rss(pids or {}, result, stop_sampling, config.sample_seconds))
        await asyncio.gather(
            ticker(config.recommend_rps, lambda: launch(recommend(rng.choice(users)), "Recommend")),
            ticker(config.events_per_second / config.batch_size,
                   lambda: launch(ingest_batch(make_batch()), "IngestEvents")),
        )
        result.load_s = time.perf_counter() - t0
        if in_flight:
            await asyncio.wait(set(in_flight), timeout=config.ingest_deadline_s + 5)
        result.elapsed_s = time.perf_counter() - t0
        stop_sampling.set()
        await sampler
    return result
