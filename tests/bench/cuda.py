"""make bench-cuda: the model alone on a GPU. ONNX Runtime's CUDA provider vs its CPU provider vs
PyTorch eager on CUDA, for a published package (when --package is given) and for a synthetic
catalogue of --items items (default 1,000,000: random weights, the default architecture, the
package format the service loads), at batch 1 and batched. Each call is what Recommend does
with the model: run the graph for scores, probabilities and the user vector, then take the
top 10 on the host.

Needs onnxruntime-gpu with a usable CUDA device; without one it says so, measures nothing and
exits 0 (CI and GPU-less boxes). Bounded: a fixed number of calls per cell.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from shared import model_package as pkg
from tests.bench.common import print_table, time_call, write_json

K = 10


def synthetic_model(n_items: int, n_categories: int, max_len: int, seed: int = 0):
    """The default architecture over `n_items` items with random weights, without text (the
    served graph holds the folded item table either way)."""
    import torch

    from training.export import ServingModel
    from training.model import ModelConfig, ShiftRec

    torch.manual_seed(seed)
    cfg = ModelConfig(n_items=n_items, n_tags=64, n_categories=n_categories, max_len=max_len, use_text=False)
    g = torch.Generator().manual_seed(seed)
    tags = torch.randint(0, 65, (n_items + 1, 4), generator=g)
    cats = torch.randint(1, n_categories + 1, (n_items + 1,), generator=g)
    return ServingModel(ShiftRec(cfg, tags, item_categories=cats), (1.0, 0.0)).eval()


def export_synthetic(n_items: int, n_categories: int, max_len: int, out: Path):
    from training.export import export_onnx

    serving = synthetic_model(n_items, n_categories, max_len)
    started = time.perf_counter()
    export_onnx(serving, out, max_len)
    return serving, time.perf_counter() - started


def package_model(package_dir: Path):
    from tests.bench.serve import eager_model

    manifest = pkg.load_manifest(package_dir)
    return eager_model(package_dir, manifest), package_dir / pkg.MODEL_FILE, manifest.max_len


def feeds_for(n_items: int, batch: int, max_len: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    shape = (batch, max_len)
    return {pkg.INPUT_ITEM_IDS: rng.integers(1, n_items + 1, shape, dtype=np.int64),
            pkg.INPUT_EVENT_TYPES: np.full(shape, 6, dtype=np.int64),
            pkg.INPUT_TIMESTAMPS: np.sort(rng.integers(1.3e9, 1.4e9, shape, dtype=np.int64), axis=1)}


def measure(name: str, eager, onnx_path: Path, n_items: int, max_len: int, batches: list[int]) -> list[dict]:
    import onnxruntime as ort
    import torch

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    sessions = {}
    for label, providers in (("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]),
                             ("cpu", ["CPUExecutionProvider"])):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        sessions[label] = ort.InferenceSession(str(onnx_path), options, providers=providers)
    if sessions["cuda"].get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(f"the CUDA provider did not load: {sessions['cuda'].get_providers()}")
    eager = eager.to("cuda")
    rng = np.random.default_rng(0)
    rows = []
    for batch in batches:
        feeds = feeds_for(n_items, batch, max_len, rng)
        tensors = [torch.from_numpy(feeds[n]).to("cuda") for n in pkg.INPUT_NAMES]
        repeats = 100 if batch == 1 else 20

        def ort_call(session, feeds=feeds):  # graph, then the top 10 on the host, as Recommend does
            scores = session.run(list(pkg.OUTPUT_NAMES), feeds)[0]
            return np.argpartition(-scores, K, axis=1)[:, :K]

        def eager_call(tensors=tensors):
            with torch.inference_mode():
                scores = eager(*tensors)[0]
                out = torch.topk(scores, K, dim=1).indices.cpu()
            return out

        row = {"model": name, "items": n_items, "batch": batch,
               "ort_cuda_ms": time_call(lambda: ort_call(sessions["cuda"]), repeats),
               "ort_cpu_1thread_ms": time_call(lambda: ort_call(sessions["cpu"]), max(3, repeats // 10)),
               "torch_cuda_eager_ms": time_call(eager_call, repeats)}
        row["ort_cuda_per_user_ms"] = row["ort_cuda_ms"] / batch
        rows.append(row)
        print(f"  {name} batch {batch}: ORT CUDA {row['ort_cuda_ms']:.2f} ms, ORT CPU "
              f"{row['ort_cpu_1thread_ms']:.2f} ms, torch CUDA {row['torch_cuda_eager_ms']:.2f} ms", flush=True)
    return rows


def cuda_usable() -> str | None:
    """None when ONNX Runtime's CUDA provider and a CUDA device are there, else why not."""
    try:
        import onnxruntime as ort
        import torch
    except ImportError as exc:
        return f"missing {exc.name}"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "this onnxruntime has no CUDA provider"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", help="a package or model directory to measure as well")
    parser.add_argument("--items", default="12101,1000000",
                        help="synthetic catalogue sizes, comma-separated (empty = none)")
    parser.add_argument("--categories", type=int, default=200)
    parser.add_argument("--batches", default="1,32,256")
    parser.add_argument("--out", default="var/bench/cuda.json")
    args = parser.parse_args()
    why = cuda_usable()
    if why is not None:
        print(f"bench-cuda: nothing measured: {why}")
        return
    import torch

    batches = [int(b) for b in args.batches.split(",")]
    rows: list[dict] = []
    if args.package:
        package = pkg.resolve_package(args.package)
        eager, path, max_len = package_model(package)
        rows += measure(f"package {package.name}", eager, path, len(pkg.load_manifest(package).item_vocab),
                        max_len, batches)
    export_seconds = {}
    for n_items in (int(n) for n in args.items.split(",") if n):
        with tempfile.TemporaryDirectory(prefix="shiftrec-bench-cuda-") as tmp:
            path = Path(tmp) / pkg.MODEL_FILE
            eager, export_seconds[n_items] = export_synthetic(n_items, args.categories, 50, path)
            print(f"synthetic {n_items:,}-item graph: {path.stat().st_size / 2**20:,.0f} MiB, "
                  f"exported in {export_seconds[n_items]:.1f} s", flush=True)
            # at most 2**26 scores per call: a batch of 256 over a million items returns 2 GB
            fits = [b for b in batches if b * n_items <= 2**26]
            rows += measure(f"synthetic {n_items:,} items", eager, path, n_items, 50, fits)
            del eager
    print(f"\nModel alone on {torch.cuda.get_device_name(0)} (median ms per call: graph + top {K} on the host)\n")
    print_table(["model", "batch", "ORT CUDA ms", "per user ms", "ORT CPU 1 thread ms", "torch CUDA eager ms"],
                [[r["model"], r["batch"], r["ort_cuda_ms"], r["ort_cuda_per_user_ms"], r["ort_cpu_1thread_ms"],
                  r["torch_cuda_eager_ms"]] for r in rows])
    write_json(args.out, {"benchmark": "cuda", "device": torch.cuda.get_device_name(0),
                          "synthetic_export_seconds": export_seconds, "rows": rows})


if __name__ == "__main__":
    main()
