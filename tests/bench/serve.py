"""make bench-serve: Recommend latency and throughput end to end (ingestion, features and
inference as processes on this machine, loopback only), at fixed offered rates; then the model
alone in ONNX Runtime vs the same model in PyTorch eager, batch 1 and 256; and the floor under
it all, the CPU of a bare grpc.aio unary call (a health Check, no interceptors, no work) on
each side.

Open-loop load: requests are sent on a fixed schedule whatever the answers do, and latency is
measured from the scheduled send time, so queueing shows up instead of hiding (no coordinated
omission). Bounded: each rate runs for --seconds; the whole run stops by itself.
"""

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from app.processes import run_cli as shiftrec
from app.processes import running_stack
from shared import model_package as pkg
from shared.clients import open_aio_channel
from shared.datasets import read_s3rec, s3rec_events, s3rec_items
from shiftrec.v1 import inference_pb2, inference_pb2_grpc
from tests.bench.common import CpuMeter, cpu_seconds, print_table, time_call, write_json

DEFAULT_RATES = (50, 100, 200, 400)


async def offered_load(target: str, users: list[str], rate: float, seconds: float, k: int,
                       deadline: float) -> dict[str, float]:
    """Send Recommend at `rate` per second for `seconds`; latency from the scheduled time."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    rng = random.Random(int(rate))
    async with open_aio_channel(target) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        await stub.Recommend(inference_pb2.RecommendRequest(user_id=users[0], k=k), timeout=5)

        async def one(scheduled: float, user: str) -> None:
            try:
                await stub.Recommend(inference_pb2.RecommendRequest(user_id=user, k=k), timeout=deadline)
                latencies.append(time.perf_counter() - scheduled)
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] = errors.get(exc.code().name, 0) + 1

        tasks = []
        start = time.perf_counter()
        n = int(rate * seconds)
        for i in range(n):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(scheduled, rng.choice(users))))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "offered_rps": rate,
        "achieved_rps": len(latencies) / elapsed,
        "requests": n,
        "errors": sum(errors.values()),
        "error_codes": errors,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p95_ms": float(np.percentile(ms, 95)) if len(ms) else float("nan"),
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        "max_ms": float(ms.max()) if len(ms) else float("nan"),
    }


async def closed_loop(target: str, users: list[str], clients: int, seconds: float, k: int,
                      deadline: float) -> dict[str, float]:
    """`clients` callers each sending Recommend as soon as the last answer came, for `seconds`:
    the throughput the stack sustains, and the latency it costs."""
    latencies: list[float] = []
    errors = 0
    rng = random.Random(clients)
    async with open_aio_channel(target) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        await stub.Recommend(inference_pb2.RecommendRequest(user_id=users[0], k=k), timeout=5)
        stop = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                sent = time.perf_counter()
                try:
                    await stub.Recommend(inference_pb2.RecommendRequest(user_id=rng.choice(users), k=k),
                                         timeout=deadline)
                    latencies.append(time.perf_counter() - sent)
                except grpc.aio.AioRpcError:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"clients": clients, "achieved_rps": len(latencies) / elapsed, "errors": errors,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


BARE_SERVER = """
import asyncio, sys
import grpc
from grpc_health.v1 import health, health_pb2_grpc

async def main():
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


def grpc_floor(calls: int = 20_000, clients: int = 8) -> dict[str, float]:
    """CPU ms per call of a bare grpc.aio unary call (health Check: no interceptors, no work),
    server and client side, `clients` concurrent callers on one channel: what every hop of the
    product (load generator -> inference -> features) costs before any code of ours runs."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = subprocess.Popen([sys.executable, "-c", BARE_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        target = f"127.0.0.1:{int(server.stdout.readline())}"

        async def run() -> float:
            async with grpc.aio.insecure_channel(target) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                left = calls

                async def caller() -> None:
                    nonlocal left
                    while left > 0:
                        left -= 1
                        await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)

                start = time.perf_counter()
                await asyncio.gather(*(caller() for _ in range(clients)))
                return time.perf_counter() - start

        server_cpu, client_cpu = cpu_seconds(server.pid) or 0.0, time.process_time()
        elapsed = asyncio.run(run())
        return {"calls": calls, "clients": clients, "calls_per_s": calls / elapsed,
                "server_cpu_ms": 1000 * ((cpu_seconds(server.pid) or 0.0) - server_cpu) / calls,
                "client_cpu_ms": 1000 * (time.process_time() - client_cpu) / calls}
    finally:
        server.kill()
        server.wait()


def eager_model(package_dir: Path, manifest: pkg.Manifest):
    """The package's PyTorch weights as the same serving module the ONNX file was exported from."""
    from training.export import ServingModel, load_weights
    from training.model import ModelConfig, ShiftRec, saved_config

    weights = load_weights(package_dir)
    model = ShiftRec.from_state(ModelConfig(**saved_config(weights["model_config"])), weights["state_dict"])
    return ServingModel(model, (manifest.calibration["a"], manifest.calibration["b"])).eval()


def model_alone(package_dir: Path, threads: int) -> list[dict[str, float]]:
    """ONNX Runtime (CPU provider) vs PyTorch eager on the same package and inputs."""
    import onnxruntime as ort
    import torch

    manifest = pkg.load_manifest(package_dir)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(package_dir / pkg.MODEL_FILE), options, providers=["CPUExecutionProvider"])
    torch.set_num_threads(threads)
    eager = eager_model(package_dir, manifest)
    rng = np.random.default_rng(0)
    rows = []
    for batch in (1, 256):
        shape = (batch, manifest.max_len)
        feeds = {
            pkg.INPUT_ITEM_IDS: rng.integers(1, len(manifest.item_vocab) + 1, shape, dtype=np.int64),
            pkg.INPUT_EVENT_TYPES: np.full(shape, 6, dtype=np.int64),
            pkg.INPUT_TIMESTAMPS: np.sort(rng.integers(1.3e9, 1.4e9, shape, dtype=np.int64), axis=1),
        }
        tensors = [torch.from_numpy(feeds[n]) for n in pkg.INPUT_NAMES]
        repeats = 200 if batch == 1 else 20
        ort_ms = time_call(lambda: session.run(list(pkg.ALL_OUTPUT_NAMES), feeds), repeats)  # noqa: B023
        with torch.inference_mode():
            torch_ms = time_call(lambda: eager(*tensors), repeats)  # noqa: B023
        rows.append({"batch": batch, "onnxruntime_ms": ort_ms, "pytorch_eager_ms": torch_ms,
                     "speedup": torch_ms / ort_ms})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", default=os.environ.get("SHIFTREC_DATASETS", "../shared/datasets"))
    parser.add_argument("--domain", default="Beauty")
    parser.add_argument("--model-dir", help="serve this model directory (default: train a quick one)")
    parser.add_argument("--train-epochs", type=int, default=3, help="epochs of the quick model")
    parser.add_argument("--rates", default=",".join(map(str, DEFAULT_RATES)))
    parser.add_argument("--seconds", type=float, default=15.0, help="per rate")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--deadline", type=float, default=1.0, help="client deadline per call, seconds")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for the model-alone table")
    parser.add_argument("--clients", default="1,8,32", help="closed-loop client counts (empty: none)")
    parser.add_argument("--out", default="var/bench/serve.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="shiftrec-bench-serve-"))
    url = f"sqlite:///{work / 'store.db'}"
    models = Path(args.model_dir) if args.model_dir else work / "models"
    domain = read_s3rec(Path(args.datasets) / "amazon", args.domain)
    users = [domain.user_names.get(u, str(u)) for u in domain.sequences]
    load_rows = []
    with running_stack(url, models) as stack:
        from app.importer import import_records

        import_records(stack.ingestion.target, s3rec_events(domain), s3rec_items(domain), progress=False)
        if pkg.latest_version(models) is None:
            shiftrec("train", "--database-url", url, "--out", str(models), "--epochs",
                     str(args.train_epochs), "--device", "cpu")
        stack.inference.wait_serving(timeout=120)
        pids = {"load generator": os.getpid(), "inference": stack.inference.proc.pid,
                "features": stack.features.proc.pid}
        for rate in (float(r) for r in args.rates.split(",")):
            meter = CpuMeter(pids)
            row = asyncio.run(offered_load(stack.inference.target, users, rate, args.seconds, args.k, args.deadline))
            row["cpu_ms_per_request"] = meter.per_request_ms(int(row["achieved_rps"] * args.seconds))
            load_rows.append(row)
            print(f"  {rate:.0f} req/s: p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
                  f"errors {row['errors']}", flush=True)
        closed_rows = []
        for clients in (int(c) for c in args.clients.split(",") if c):
            row = asyncio.run(closed_loop(stack.inference.target, users, clients, args.seconds, args.k,
                                          args.deadline))
            closed_rows.append(row)
            print(f"  {clients} closed-loop clients: {row['achieved_rps']:.0f} req/s, p99 {row['p99_ms']:.1f} ms",
                  flush=True)
    package = pkg.resolve_package(models)
    alone = model_alone(package, args.threads)
    floor = grpc_floor()

    print(f"\nRecommend end to end (k={args.k}, {len(users):,} {args.domain} users, 3 services + load "
          f"generator on {os.cpu_count()} CPUs, {args.seconds:.0f} s per rate)\n")
    print_table(["offered req/s", "achieved req/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors"],
                [[r["offered_rps"], r["achieved_rps"], r["p50_ms"], r["p95_ms"], r["p99_ms"], r["max_ms"],
                  r["errors"]] for r in load_rows])
    print(f"\nCPU per answered request, ms (user + system; {os.cpu_count()} CPUs = "
          f"{1000 * (os.cpu_count() or 1):,} CPU ms per second)\n")
    print_table(["offered req/s", *pids, "all"],
                [[r["offered_rps"], *(r["cpu_ms_per_request"].get(n, float("nan")) for n in pids),
                  sum(r["cpu_ms_per_request"].values())] for r in load_rows])
    print(f"\nClosed loop (each client sends when its last answer came, {args.seconds:.0f} s)\n")
    print_table(["clients", "req/s", "p50 ms", "p99 ms", "errors"],
                [[r["clients"], r["achieved_rps"], r["p50_ms"], r["p99_ms"], r["errors"]] for r in closed_rows])
    manifest = pkg.load_manifest(package)
    print(f"\nModel alone ({len(manifest.item_vocab):,} items, max_len {manifest.max_len}, "
          f"{args.threads} thread(s), median ms per call)\n")
    print_table(["batch", "ONNX Runtime ms", "PyTorch eager ms", "ORT speed-up"],
                [[r["batch"], r["onnxruntime_ms"], r["pytorch_eager_ms"], r["speedup"]] for r in alone])
    print(f"\nThe floor: a bare grpc.aio unary call (health Check, no interceptors), {floor['clients']} "
          f"concurrent callers, {floor['calls']:,} calls\n")
    print_table(["calls/s", "server CPU ms per call", "client CPU ms per call"],
                [[floor["calls_per_s"], floor["server_cpu_ms"], floor["client_cpu_ms"]]])
    write_json(args.out, {"benchmark": "serve", "domain": args.domain, "k": args.k,
                          "model_version": manifest.version, "load": load_rows, "closed_loop": closed_rows,
                          "settings": {k: v for k, v in os.environ.items() if k.startswith("SHIFTREC_INFERENCE")},
                          "model_alone": alone, "grpc_floor": floor})


if __name__ == "__main__":
    main()
