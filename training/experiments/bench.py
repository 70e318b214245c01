"""Training benchmark: seconds per epoch, time to reach validation NDCG@10 0.05 on Beauty, and
peak memory (process RSS; on CUDA also the peak GPU memory allocated), for the default config
(`--config` to change it) on CPU or `--device cuda`. Stops at the target or after
`--max-minutes`. Prints a table and writes JSON.

    python -m training.experiments.bench --datasets ../shared/datasets --out var/bench/train.json
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path


def peak_rss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 / 1024 if sys.platform == "darwin" else rss / 1024  # bytes vs KiB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="../shared/datasets")
    parser.add_argument("--domain", default="Beauty")
    parser.add_argument("--target", type=float, default=0.05, help="validation NDCG@10 to reach")
    parser.add_argument("--max-minutes", type=float, default=15.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--config", help="JSON file of config overrides")
    parser.add_argument("--out", default="var/bench/train.json")
    args = parser.parse_args(argv)

    import torch

    from training.data import load_files
    from training.model import ModelConfig
    from training.train import TrainConfig, load_overrides, resolve_device, split_overrides, train

    started = time.perf_counter()
    data = load_files(f"s3rec:{Path(args.datasets) / 'amazon' / args.domain}")
    load_seconds = time.perf_counter() - started
    reached: dict[str, float] = {}

    class Reached(Exception):
        pass

    history: list[dict[str, float]] = []

    def on_epoch(row: dict[str, float]) -> None:
        history.append(row)
        if row["valid_NDCG@10"] >= args.target:
            reached.update(epoch=row["epoch"], seconds=row["elapsed_seconds"])
            raise Reached  # stop at the target: the rest of the run is not what is measured

    model_over, train_over = split_overrides(load_overrides(args.config))
    cfg = TrainConfig(**{**train_over, "device": args.device, "threads": args.threads,
                         "max_minutes": args.max_minutes, "patience": 10**6})
    device = resolve_device(args.device)
    try:
        train(data, ModelConfig(**model_over), cfg, progress=True, on_epoch=on_epoch)
    except Reached:
        pass
    epoch_seconds = [r["epoch_seconds"] for r in history]
    result = {
        "domain": args.domain,
        "device": str(device) if device.type == "cpu" else f"cuda ({torch.cuda.get_device_name(device)})",
        "threads": args.threads,
        "config_overrides": json.dumps(model_over | train_over),
        "load_seconds": load_seconds,
        "epochs": len(history),
        "seconds_per_epoch_mean": sum(epoch_seconds) / max(len(epoch_seconds), 1),
        "seconds_per_epoch_min": min(epoch_seconds, default=float("nan")),
        "target_valid_ndcg10": args.target,
        "seconds_to_target": reached.get("seconds"),
        "epochs_to_target": reached.get("epoch"),
        "best_valid_ndcg10": max((r["valid_NDCG@10"] for r in history), default=0.0),
        "peak_rss_mib": peak_rss_mib(),
        "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**result, "history": history}, indent=1))
    for key, value in result.items():
        print(f"  {key:<24} {value if not isinstance(value, float) else f'{value:.3f}'}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
