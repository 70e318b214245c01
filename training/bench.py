"""Training benchmark on CPU: seconds per epoch, time to reach validation NDCG@10 0.05 on
Beauty, and peak memory (RSS). Prints a table and writes JSON.

    python -m training.bench --datasets ../shared/datasets --out var/bench/train.json
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="../shared/datasets")
    parser.add_argument("--domain", default="Beauty")
    parser.add_argument("--target", type=float, default=0.05, help="validation NDCG@10 to reach")
    parser.add_argument("--max-minutes", type=float, default=15.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="var/bench/train.json")
    args = parser.parse_args()

    from training.data import load_files
    from training.model import ModelConfig
    from training.train import TrainConfig, train

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

    cfg = TrainConfig(device="cpu", threads=args.threads, max_minutes=args.max_minutes, patience=10**6)
    try:
        train(data, ModelConfig(), cfg, progress=True, on_epoch=on_epoch)
    except Reached:
        pass
    epoch_seconds = [r["epoch_seconds"] for r in history]
    result = {
        "domain": args.domain,
        "threads": args.threads,
        "load_seconds": load_seconds,
        "epochs": len(history),
        "seconds_per_epoch_mean": sum(epoch_seconds) / max(len(epoch_seconds), 1),
        "seconds_per_epoch_min": min(epoch_seconds, default=float("nan")),
        "target_valid_ndcg10": args.target,
        "seconds_to_target": reached.get("seconds"),
        "epochs_to_target": reached.get("epoch"),
        "best_valid_ndcg10": max((r["valid_NDCG@10"] for r in history), default=0.0),
        "peak_rss_mib": peak_rss_mib(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**result, "history": history}, indent=1))
    for key, value in result.items():
        print(f"  {key:<24} {value if not isinstance(value, float) else f'{value:.3f}'}")


if __name__ == "__main__":
    main()
